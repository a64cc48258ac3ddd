"""Hub ids through huggingface_hub: its cache, its offline mode, and a clear error when neither can help."""

from __future__ import annotations

from pathlib import Path

from ..errors import MwcError

PATTERNS = ["config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
            "model-*.safetensors", "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json",
            "special_tokens_map.json", "tokenizer_config.json", "preprocessor_config.json"]


def download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError)
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise MwcError(f"{repo_id}: huggingface_hub is needed for hub ids ({e}); pip install huggingface_hub") from e
    try:
        return Path(snapshot_download(repo_id, allow_patterns=PATTERNS))
    except LocalEntryNotFoundError as e:
        raise MwcError(f"{repo_id}: not in the Hugging Face cache and the hub cannot be reached (offline?); "
                       "download it on a connected machine or pass a local folder") from e
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise MwcError(f"{repo_id}: no such model on the hub (or it needs a login); check the id") from e
    except OSError as e:
        raise MwcError(f"{repo_id}: could not fetch from the hub ({type(e).__name__}); pass a local folder") from e
