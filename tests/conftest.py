"""Shared pytest setup: CPU only, fixtures located beside the checkout."""

import os
import pathlib

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_FIXTURES = pathlib.Path(
    os.environ.get("HRM_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures" / "hrm_original")
)


@pytest.fixture(scope="session")
def original_fixture_dir():
  """Directory of the original's tiny fixtures (../shared/fixtures/hrm_original/tiny)."""
  path = SHARED_FIXTURES / "tiny"
  if not path.exists():
    pytest.skip(f"original fixtures not found at {path} (set HRM_FIXTURES)")
  return path
