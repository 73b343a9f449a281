"""Token counting with tiktoken, including on machines without internet access.

tiktoken downloads its BPE files from OpenAI's blob storage on first use. Where that
host is unreachable (CI, an offline demo machine), :func:`install_offline_encodings`
rebuilds the same files from the npm registry's ``tiktoken`` package and places them in
tiktoken's cache; every file is checked against the sha256 that tiktoken itself
expects, so the result is byte-for-byte the official encoding or nothing.

Flow counts tokens to estimate interrupted completions (``estimated=true`` usage) and
in the offline demo responder. An encoding loads at its first use; the server loads
its LLM's at start-up (:func:`preload`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

import tiktoken

log = logging.getLogger(__name__)

NPM_PACKAGE = "tiktoken@1.0.22"
BLOB = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# The hashes tiktoken's own loader (tiktoken_ext.openai_public) verifies.
EXPECTED_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}


def cache_dir() -> Path:
    """tiktoken's cache directory; Flow defaults it to ``~/.cache/flow/tiktoken``."""
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured:
        return Path(configured)
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flow" / "tiktoken"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(path)
    return path


def _cache_file(name: str) -> Path:
    return cache_dir() / hashlib.sha1(BLOB.format(name=name).encode()).hexdigest()


def _from_npm_json(raw: str) -> str:
    """The npm package stores ranks as runs: ``! <start-rank> tok tok ...``."""
    tokens = raw.split(" ")
    lines = []
    rank = 0
    i = 0
    while i < len(tokens):
        if tokens[i] == "!":
            rank = int(tokens[i + 1])
            i += 2
            continue
        lines.append(f"{tokens[i]} {rank}\n")
        rank += 1
        i += 1
    return "".join(lines)


def install_offline_encodings(quiet: bool = False) -> list[str]:
    """Make o200k_base and cl100k_base available offline; returns what was installed."""
    missing = [n for n in EXPECTED_SHA256 if not _cache_file(n).exists()]
    if not missing:
        return []
    if not shutil.which("npm"):
        raise RuntimeError("tiktoken encodings are fetched from the npm registry: install npm")
    if not quiet:
        print(f"[tokenizer] fetching {', '.join(missing)} (one time)", file=sys.stderr)
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", NPM_PACKAGE, "--pack-destination", tmp, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with tarfile.open(next(Path(tmp).glob("*.tgz"))) as tar:
            for name in missing:
                member = tar.extractfile(f"package/encoders/{name}.json")
                if member is None:
                    raise RuntimeError(f"the npm package has no {name} encoding")
                content = _from_npm_json(json.load(member)["bpe_ranks"]).encode()
                digest = hashlib.sha256(content).hexdigest()
                if digest != EXPECTED_SHA256[name]:
                    raise RuntimeError(f"{name}: hash {digest} is not tiktoken's")
                _cache_file(name).write_bytes(content)
    return missing


def encoding_name_for(model: str) -> str:
    """The name of the model's encoding (o200k_base for models tiktoken does not know)."""
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        return "o200k_base"


@lru_cache(maxsize=16)
def encoding_for(model: str) -> tiktoken.Encoding:
    """The model's encoding (o200k_base for models tiktoken does not know)."""
    cache_dir()
    return tiktoken.get_encoding(encoding_name_for(model))


def preload(model: str) -> bool:
    """Load the model's encoding now when its file is on disk (loading takes ~0.1 s of
    CPU, a pause for whatever runs beside it); False, and nothing fetched, when it is
    not: it then loads, fetched as before, at first use."""
    name = encoding_name_for(model)
    if name not in EXPECTED_SHA256 or not _cache_file(name).exists():
        return False
    encoding_for(model)
    return True


def count_tokens(text: str, model: str) -> int:
    return len(encoding_for(model).encode(text, disallowed_special=()))


def count_message_tokens(messages: list[dict[str, object]], model: str) -> int:
    """Prompt tokens of a chat request, the way OpenAI counts them: 3 tokens of framing
    per message, the role and content, and 3 tokens priming the reply."""
    enc = encoding_for(model)
    total = 3
    for message in messages:
        total += 3
        for key in ("role", "content", "name"):
            value = message.get(key)
            if isinstance(value, str):
                total += len(enc.encode(value, disallowed_special=()))
            elif isinstance(value, list):  # content parts
                for part in value:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        total += len(enc.encode(part["text"], disallowed_special=()))
        if message.get("name"):
            total += 1
    return total


if __name__ == "__main__":
    print("installed:", install_offline_encodings() or "nothing (already present)")
