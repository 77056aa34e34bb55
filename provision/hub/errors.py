"""What can go wrong fetching weights, each as one message naming the thing and the fix."""

from __future__ import annotations

from provision.errors import ProvisionError


class SourceFailed(ProvisionError):
    """A source that does not deliver (unreachable, 5xx, transfers that keep breaking).

    `--source auto` moves on to the next source when it sees one of these.
    """

    code = "source_failed"


class HashMismatch(Exception):
    """Bytes that arrived differ from what the hub says (internal: the file is fetched again)."""


class AccessRefused(ProvisionError):
    """A gated repository refuses us: no token, or one not on its access list."""


def gated_message(
    repo_id: str, page: str, has_token: bool, hub: str = "huggingface"
) -> ProvisionError:
    if hub == "modelscope":
        how = "set MODELSCOPE_API_TOKEN, or run `modelscope login`"
    else:
        how = "export HF_TOKEN=hf_... (a read token), or run `hf auth login`"
    if has_token:
        return AccessRefused(
            f"{repo_id} is gated and your token is not on its access list.",
            f"Accept the license at {page} with the account that owns the token, then retry.",
        )
    return AccessRefused(
        f"{repo_id} is gated: its files need an accepted license and a token.",
        f"Accept the license at {page}, then give a token: {how}. "
        "provision never writes the token anywhere.",
    )


def unsafe_path(repo_id: str, path: str) -> ProvisionError:
    return ProvisionError(
        f"{repo_id} lists a file named {path!r}, which would land outside the cache folder.",
        "Nothing was downloaded. The repository is malformed or hostile; report it, or use "
        "--exclude to leave that file out.",
    )


def disk_full(where: str, need: int, free: int, repo_id: str) -> ProvisionError:
    from provision.units import fmt_bytes

    return ProvisionError(
        f"Not enough free space in {where} for {repo_id}: {fmt_bytes(need)} still to fetch, "
        f"{fmt_bytes(free)} free.",
        "Free some space, or put the caches on a bigger disk: PROVISION_DATA_DIR=/big/disk "
        "provision env --persist (files already downloaded are kept and reused).",
    )
