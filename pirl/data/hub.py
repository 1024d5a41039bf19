"""Files of Hugging Face Hub dataset repos, fetched with `huggingface_hub` (no lerobot, no torch).

`fetch_files(repo_id, names, dest)` makes each named repo file exist at `dest/<name>`: files already
there are kept, the others come from the Hugging Face cache (`HF_HUB_CACHE`, default
~/.cache/huggingface/hub), downloaded into it first when they are not cached, and are then
hard-linked to `dest` (data and videos: no second copy on disk) or copied (meta/, which tools
rewrite in place; also anything across file systems). So a dataset fetched once is a plain folder
under `HF_LEROBOT_HOME` that lerobot and openpi read too, and a cache filled by `hf download` or
`snapshot_download` is used without the network. Offline (`HF_HUB_OFFLINE=1`, or the Hub
unreachable) a file in neither place is reported by name, all of them in one error.

`list_repo_files(repo_id)` lists a repo's files: from the Hub, or offline from the cached snapshot
of that revision (`datasets--<org>--<name>/snapshots/<commit>/`, the commit read from `refs/`).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import tqdm

from pirl.errors import UserError

REPO_TYPE = "dataset"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_COMMIT = re.compile(r"[0-9a-f]{40}")


class HubError(UserError, FileNotFoundError):
    """A dataset repo, revision or file could not be found on the Hub or in the local cache (a
    `UserError`: the message says what to fetch; still a FileNotFoundError for older callers)."""


def looks_like_repo_id(name: str) -> bool:
    """`org/name` (one slash, no leading '.', '/' or '~'): what the Hub accepts as a repo id."""
    return _REPO_ID.fullmatch(name) is not None and ".." not in name


def hub_offline() -> bool:
    """Whether huggingface_hub is told not to use the network (`HF_HUB_OFFLINE=1`)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The Hugging Face cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The cached snapshot folder of a dataset repo at `revision` (default main); it may not exist
    (nor, for a branch or tag that was never fetched, its refs/ file naming the commit)."""
    storage = hub_cache_dir() / f"datasets--{repo_id.replace('/', '--')}"
    revision = revision or "main"
    if _COMMIT.fullmatch(revision):
        return storage / "snapshots" / revision
    ref = storage / "refs" / revision
    return storage / "snapshots" / ref.read_text().strip() if ref.is_file() else ref


def _offline_reason() -> str:
    return "HF_HUB_OFFLINE=1" if hub_offline() else "the Hub cannot be reached"


def list_repo_files(repo_id: str, revision: str | None = None) -> list[str]:
    """Paths of the files of a dataset repo at `revision`; offline, those of its cached snapshot."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if not hub_offline():
        try:
            return sorted(HfApi().list_repo_files(repo_id, repo_type=REPO_TYPE, revision=revision))
        except RepositoryNotFoundError as error:
            raise HubError(
                f"no dataset repo {repo_id!r} on the Hugging Face Hub (or it is private/gated and you are "
                f"not logged in: `hf auth login`): {error}"
            ) from error
        except RevisionNotFoundError as error:
            raise HubError(f"dataset repo {repo_id!r} has no revision {revision!r}: {error}") from error
        except Exception as error:  # no connection (httpx / requests errors, by version): use the cache
            reason = f"the Hub cannot be reached ({type(error).__name__}: {error})"
    else:
        reason = "HF_HUB_OFFLINE=1"
    snapshot = cached_snapshot(repo_id, revision)
    if not snapshot.is_dir():
        raise HubError(
            f"{reason}, and the Hugging Face cache has no snapshot of dataset {repo_id!r} at revision "
            f"{revision or 'main'} (no {snapshot}): missing meta/info.json and every other "
            f"file. Download it once with network access (`hf download {repo_id} --repo-type dataset`), "
            "or pass a local dataset folder."
        )
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _place(cached: Path, target: Path, link: bool) -> None:
    """Put a cached file at `target` atomically (a temp name, then rename): hard-linked when `link`
    (and possible), else copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    source = Path(os.path.realpath(cached))
    try:
        if not link:
            raise OSError("copy")
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def cached_file(repo_id: str, name: str, revision: str | None = None) -> Path:
    """A repo file in the Hugging Face cache (downloaded into it if needed and allowed)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(
            hf_hub_download(repo_id, name, repo_type=REPO_TYPE, revision=revision, cache_dir=hub_cache_dir())
        )
    except LocalEntryNotFoundError as error:  # offline (or no connection) and not in the cache
        raise _Unavailable(
            f"{_offline_reason()} and {name} of dataset {repo_id!r} is not in the Hugging Face cache "
            f"{hub_cache_dir()}"
        ) from error
    except EntryNotFoundError as error:
        raise _NotInRepo(f"dataset repo {repo_id!r} has no file {name}") from error


class _Unavailable(HubError):
    """Offline and not cached (an internal signal, reported by `fetch_files` with every such file)."""


class _NotInRepo(HubError):
    """The repo has no such file."""


def fetch_files(
    repo_id: str,
    names: Sequence[str],
    dest: str | os.PathLike,
    *,
    revision: str | None = None,
    progress: bool = True,
) -> list[str]:
    """Make `dest/<name>` exist for every repo file `name`, in the given order (see the module
    docstring).

    Returns the names that were fetched (not already in `dest`). Raises `HubError` naming every
    file that is neither in `dest` nor obtainable (offline and not cached, or not in the repo).
    """
    dest = Path(dest)
    todo = [n for n in dict.fromkeys(names) if not (dest / n).is_file()]
    unavailable: list[str] = []
    not_in_repo: list[str] = []
    with tqdm.tqdm(
        total=len(todo), desc=f"fetching {repo_id}", unit="file", disable=not progress or not todo
    ) as bar:
        for name in todo:
            try:
                cached = cached_file(repo_id, name, revision)
            except _Unavailable:
                unavailable.append(name)
                continue
            except _NotInRepo:
                not_in_repo.append(name)
                continue
            if unavailable or not_in_repo:
                continue  # an error follows: keep `dest` as it was (files placed in order)
            # Metadata is copied: tools (lerobot too) rewrite it in place, which through a hard link
            # would change the cache's blob. The bulk (data, videos) is linked, not duplicated.
            _place(cached, dest / name, link=not name.startswith("meta/"))
            bar.update()
    if not_in_repo:
        raise HubError(
            f"dataset repo {repo_id!r} (revision {revision or 'main'}) has no file "
            + ", ".join(not_in_repo)
            + "; its metadata refers to it, so the repo is incomplete"
        )
    if unavailable:
        listing = "\n  ".join(unavailable)
        raise HubError(
            f"{_offline_reason()}: {len(unavailable)} file(s) of dataset {repo_id!r} (revision "
            f"{revision or 'main'}) are neither in {dest} nor in the Hugging Face cache "
            f"{hub_cache_dir()}:\n  {listing}\nFetch them once with network access (unset HF_HUB_OFFLINE; "
            f"or `hf download {repo_id} --repo-type dataset`), or copy the dataset to {dest}."
        )
    return todo
