"""A PyTorch re-implementation of the original HRM (sapientinc/HRM), CPU only.

It exists to produce reference numbers for the JAX port; its state-dict keys equal the original's.
"""

from typing import Any, Mapping

from tools.hrm_torch.adam_atan2 import AdamATan2
from tools.hrm_torch.checkpoint import (
    COMPILED_PREFIX, load_into_loss_head, load_state_dict_file, to_compiled_state_dict,
    to_loss_head_keys,
)
from tools.hrm_torch.hrm_act_v1 import (
    HierarchicalReasoningModel_ACTV1, HierarchicalReasoningModel_ACTV1_Inner,
    HierarchicalReasoningModel_ACTV1Block, HierarchicalReasoningModel_ACTV1Carry,
    HierarchicalReasoningModel_ACTV1Config, HierarchicalReasoningModel_ACTV1InnerCarry,
    HierarchicalReasoningModel_ACTV1ReasoningModule,
)
from tools.hrm_torch.layers import trunc_normal_init_
from tools.hrm_torch.losses import (
    IGNORE_LABEL_ID, ACTLossHead, softmax_cross_entropy, stablemax_cross_entropy,
)
from tools.hrm_torch.sparse_embedding import CastedSparseEmbedding, CastedSparseEmbeddingSignSGD


def build_loss_head(model_cfg: Mapping[str, Any], loss_type: str = "stablemax_cross_entropy"
                    ) -> ACTLossHead:
  """ACTLossHead(HierarchicalReasoningModel_ACTV1(model_cfg)), as pretrain.create_model builds it."""
  return ACTLossHead(HierarchicalReasoningModel_ACTV1(model_cfg), loss_type)
