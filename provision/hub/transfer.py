"""Moving one file's bytes: resumable, verified, placed atomically, one process at a time.

Each file is fetched into a partial file whose name does not change between runs, under an
inter-process lock. After a kill, the next run finds the partial file, hashes what is there and
asks only for the rest (HTTP `Range: bytes=N-`). A dropped connection or a 5xx is retried from
where it stopped; the sha256 (and git's blob id for plain-git files) is checked before the file is
moved into place with a rename, so a reader never sees half a file or a wrong one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.atomic import file_lock
from provision.errors import ProvisionError
from provision.hub.errors import HashMismatch, SourceFailed, gated_message
from provision.hub.progress import Progress
from provision.secrets import redact_text
from provision.units import fmt_bytes

CHUNK = 1024 * 1024
RETRIES_ENV = "PROVISION_RETRIES"  # attempts without progress before a source counts as failing
RETRY_WAIT_ENV = "PROVISION_RETRY_WAIT"  # first back-off in seconds (doubles, at most 8 s)
HASH_ATTEMPTS = 3  # fetches of a file whose bytes arrive wrong before giving up on the source


@dataclass
class Job:
    path: str  # in the repository: for messages and progress
    size: int
    target: Path  # where the verified file goes
    partial: Path
    lock: Path
    sha256: str | None = None  # expected, when the hub says
    git_oid: str | None = None  # expected git blob id (plain-git files on Hugging Face)
    url: str | None = None  # http sources
    origin: Path | None = None  # local sources
    leftovers: tuple[Path, ...] = ()  # other tools' partial files of the same blob, adoptable


@dataclass
class Outcome:
    job: Job
    sha256: str
    fetched: int = 0  # bytes that came over the network (or from the source folder) this run
    resumed: int = 0  # bytes of a partial file that were kept
    placed_by_other: bool = False  # another process finished it while we waited for the lock


class _Partial:
    """A partial file and the hashes of what it holds, kept in step byte for byte."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.have = job.partial.stat().st_size if job.partial.exists() else 0
        if self.have > job.size:
            self.reset()
        self._hashers()
        if self.have:
            with job.partial.open("rb") as handle:
                while block := handle.read(8 * CHUNK):
                    self.sha256.update(block)
                    if self.git is not None:
                        self.git.update(block)

    def _hashers(self) -> None:
        self.sha256 = hashlib.sha256()
        self.git = hashlib.sha1(b"blob %d\0" % self.job.size) if self.job.git_oid else None

    def reset(self) -> None:
        self.job.partial.unlink(missing_ok=True)
        self.have = 0
        self._hashers()

    def append(self, out: Any, chunk: bytes, fetched: int) -> None:
        if self.have + len(chunk) > self.job.size:
            raise HashMismatch(f"more than the {self.job.size} bytes expected", fetched)
        view = memoryview(chunk)
        try:
            while view:
                view = view[out.write(view) :]
        except BaseException:
            # A short write then an error (a full disk): drop the stray tail so the file ends
            # exactly where `have` says, and a resume continues from there.
            with contextlib.suppress(OSError):
                os.ftruncate(out.fileno(), self.have)
            raise
        self.sha256.update(chunk)
        if self.git is not None:
            self.git.update(chunk)
        self.have += len(chunk)

    def check(self, fetched: int) -> str:
        """The sha256, after checking size, sha256 and git's blob id against the hub's."""
        job = self.job
        if self.have != job.size:
            raise HashMismatch(f"size {self.have}, expected {job.size}", fetched)
        digest = self.sha256.hexdigest()
        if job.sha256 and digest != job.sha256:
            raise HashMismatch(f"sha256 {digest[:12]}..., expected {job.sha256[:12]}...", fetched)
        if self.git is not None and self.git.hexdigest() != job.git_oid:
            raise HashMismatch(
                f"git blob id {self.git.hexdigest()[:12]}..., expected {job.git_oid}", fetched
            )
        return digest


class _Retry(Exception):
    """A failure worth another try from where the bytes stopped."""


class _Restart(_Retry):
    """The source refused the resume point (416): the partial file is dropped, start over."""


class Cancelled(Exception):
    """Another file failed for good: stop, keeping the partial file for the next run."""


def _settings() -> tuple[int, float]:
    from provision.variables import env_value

    return int(env_value(RETRIES_ENV)), env_value(RETRY_WAIT_ENV)


def retry_wait() -> float:
    """Seconds before the first retry (PROVISION_RETRY_WAIT), doubled on each further one."""
    return _settings()[1]


def disk_full_error(job: Job, have: int) -> ProvisionError:
    return ProvisionError(
        f"The disk filled up while writing {job.path} ({fmt_bytes(have)} of "
        f"{fmt_bytes(job.size)} in), in {job.partial.parent}.",
        "Free some space and run the same command again: it resumes where it stopped, and the "
        "files already downloaded are kept.",
    )


class Fetcher:
    """Fetches jobs; shared by the worker threads of one download."""

    def __init__(
        self,
        client: Any = None,
        headers: dict[str, str] | None = None,
        progress: Progress | None = None,
        describe: str = "",
        repo_id: str = "",
        gated_page: str = "",
        hub: str = "huggingface",
    ) -> None:
        self.client = client
        self.repo_id = repo_id
        from provision.hub.sources import USER_AGENT

        # Per request, not per client: the client may be huggingface_hub's shared one
        # (sources.transfer_client), which sets neither.
        self.headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
        self.timeout: Any = None
        if client is not None:
            from provision.hub.sources import transfer_timeout

            self.timeout = transfer_timeout()
        self.progress = progress or Progress()
        self.stop = threading.Event()
        self.describe = describe  # the source, for messages
        self.gated_page = gated_page
        self.hub = hub
        self.retries, self.wait = _settings()
        self.folders: set[Path] = set()  # where files were renamed into place (sync_folders)
        # At most this many transfers at once (run_jobs sets it to `workers`); the fsync and
        # rename of a file already fetched happen outside it (see run_jobs).
        self.slots: threading.Semaphore | None = None
        self._lock = threading.Lock()

    # --- one job -----------------------------------------------------------------------------
    def run(self, job: Job, still_needed: Any = None) -> Outcome:
        """Fetch `job` unless another process placed it meanwhile (`still_needed(job)` False)."""
        job.target.parent.mkdir(parents=True, exist_ok=True)
        job.partial.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(job.lock):
            if still_needed is not None and not still_needed(job):
                return Outcome(job, job.sha256 or "", placed_by_other=True)
            self._adopt_leftovers(job)
            with self.slots if self.slots is not None else contextlib.nullcontext():
                outcome = self._verified(job)
            self._place(job)  # the slot is free for the next transfer while this file syncs
        return outcome

    def _verified(self, job: Job) -> Outcome:
        """The file's bytes in its partial file, checked; fetched again when they are wrong."""
        wasted = 0  # bytes of earlier attempts that failed the check
        for attempt in range(1, HASH_ATTEMPTS + 1):
            try:
                outcome = self._fetch(job)
                outcome.fetched += wasted
                return outcome
            except HashMismatch as exc:
                wasted += exc.args[1] if len(exc.args) > 1 else 0
                job.partial.unlink(missing_ok=True)
                if attempt == HASH_ATTEMPTS:
                    raise SourceFailed(
                        f"{job.path} from {self.describe} failed its check {attempt} times "
                        f"({exc.args[0]}).",
                        "The source is serving wrong bytes; try another --source.",
                    ) from exc
        raise AssertionError("unreachable")

    def _adopt_leftovers(self, job: Job) -> None:
        """A partial file huggingface_hub left when killed is a prefix of the same blob: keep the
        longest as ours instead of fetching those bytes again (the hash check still covers it)."""
        if job.partial.exists() or not job.leftovers:
            return
        found = [p for p in job.leftovers if p.exists() and p.stat().st_size <= job.size]
        if found:
            best = max(found, key=lambda p: p.stat().st_size)
            os.replace(best, job.partial)
            for other in found:
                if other != best:
                    other.unlink(missing_ok=True)

    def _place(self, job: Job) -> None:
        # Durability costs two kinds of fsync, and each is paid where it buys something:
        # - the file, before its rename, every time: otherwise a power cut can leave the new
        #   name pointing at a file whose bytes never reached the disk (zero-filled or short),
        #   and the next run would reuse it as complete (it checks the size, not the hash);
        # - its folder, once per folder per run (`sync_folders`, after the last file): that
        #   makes the renames themselves durable, and one fsync of a folder covers every
        #   rename into it. Syncing the folder after each file bought nothing more (a rename
        #   lost in a crash only means that file is fetched again) and cost one fsync per file.
        fd = os.open(job.partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(job.partial, 0o644)
        os.replace(job.partial, job.target)
        with self._lock:
            self.folders.add(job.target.parent)

    def sync_folders(self) -> None:
        """fsync each folder a file was renamed into during this run, once (see `_place`)."""
        with self._lock:
            folders, self.folders = sorted(self.folders), set()
        for folder in folders:
            try:
                dir_fd = os.open(folder, os.O_RDONLY)
            except FileNotFoundError:
                continue  # removed since (a cache cleared meanwhile): nothing left to make durable
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _fetch(self, job: Job) -> Outcome:
        state = _Partial(job)
        outcome = Outcome(job, "", resumed=state.have)
        task = self.progress.file_started(job.path, job.size, state.have)
        failures = 0
        last_error: BaseException | None = None
        try:
            while state.have < job.size:
                if self.stop.is_set():
                    raise Cancelled(job.path)
                before = state.have
                try:
                    with self._open(job, state.have) as (start, chunks):
                        if start != state.have:  # the source sent the file from the start
                            state.reset()
                            outcome.resumed = 0
                        self._write(state, chunks, outcome, task)
                    if state.have < job.size:
                        raise _Retry(f"the connection closed at byte {state.have} of {job.size}")
                except _Restart as exc:
                    state.reset()  # the partial file goes, and what the run counted with it
                    outcome.resumed = 0
                    last_error = exc
                except _Retry as exc:
                    last_error = exc
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise disk_full_error(job, state.have) from exc
                    if not _transient(exc):
                        raise
                    last_error = exc
                except Exception as exc:
                    if _redirect_loop(exc):
                        raise ProvisionError(
                            f"{job.path}: {self.describe} redirects in a loop "
                            f"({redact_text(str(exc))}).",
                            "The source is misconfigured: use another --source, or report it. "
                            "Files already downloaded are kept.",
                        ) from exc
                    if not _transient(exc):
                        raise
                    last_error = exc
                if state.have >= job.size:
                    break
                failures = 0 if state.have > before else failures + 1
                if failures > self.retries:
                    raise SourceFailed(
                        f"{job.path}: the transfer from {self.describe} kept failing "
                        f"({_describe(last_error)}), {failures} tries without progress.",
                        (
                            f"{fmt_bytes(state.have)} are kept in {job.partial.name}; running "
                            "the command again resumes there, or try another --source."
                            if state.have
                            else "Nothing of it is kept; run the command again later, or try "
                            "another --source."
                        ),
                    )
                self._sleep(min(8.0, self.wait * 2 ** max(0, failures - 1)))
        finally:
            self.progress.file_done(task)
        outcome.sha256 = state.check(outcome.fetched)
        return outcome

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Cancelled("stopped")

    def _write(self, state: _Partial, chunks: Iterator[bytes], outcome: Outcome, task: Any) -> None:
        # Unbuffered: every byte received is in the file (the kernel's cache) before the next
        # read, so a kill loses nothing that arrived; `state` counts as it goes, so an error
        # mid-stream leaves it agreeing with the file.
        with state.job.partial.open("ab", buffering=0) as out:
            for chunk in chunks:
                if not chunk:
                    continue
                state.append(out, chunk, outcome.fetched)
                outcome.fetched += len(chunk)
                self.progress.advance(task, len(chunk))
                if self.stop.is_set():
                    raise Cancelled(state.job.path)

    # --- sources -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _open(self, job: Job, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        if job.origin is not None:
            with job.origin.open("rb") as source:
                source.seek(offset)
                yield offset, iter(lambda: source.read(CHUNK), b"")
            return
        headers = dict(self.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with self.client.stream("GET", job.url, headers=headers, timeout=self.timeout) as response:
            status = response.status_code
            if status == 206:
                start = _range_start(response.headers.get("Content-Range"))
                if start is None or start > offset:
                    raise _Retry(f"a bad Content-Range ({response.headers.get('Content-Range')})")
                # No re-chunking: bytes are written as they arrive, so a dropped connection
                # loses none of what came before it. A range starting early is trimmed.
                yield offset, _skip(response.iter_raw(), offset - start)
            elif status == 200:
                yield 0, response.iter_raw()
            elif status == 416:
                raise _Restart("the source refused the resume point (416)")
            elif status in (401, 403):
                response.read()
                code = response.headers.get("X-Error-Code", "")
                has_token = "Authorization" in self.headers or "Cookie" in self.headers
                if code == "GatedRepo" or self.hub == "modelscope":
                    raise gated_message(self.repo_id, self.gated_page, has_token, self.hub)
                raise ProvisionError(
                    f"{self.describe} refused {job.path} of {self.repo_id} ({status}).",
                    "A private repository needs a token with access: export HF_TOKEN=hf_... or "
                    "run `hf auth login`.",
                )
            elif status == 404:
                raise ProvisionError(
                    f"{job.path} is listed by {self.describe} but its download answers 404.",
                    "The repository changed while downloading, or the mirror is incomplete; "
                    "run again, or try another --source.",
                )
            elif status >= 500 or status in (408, 429):
                raise _Retry(f"HTTP {status}")
            else:
                raise SourceFailed(f"{self.describe} answered {status} for {job.path}.")


def _skip(chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
    """`chunks` without their first `n` bytes."""
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:] if n else chunk
        n = 0


def _range_start(header: str | None) -> int | None:
    # "bytes 100-199/1000"
    if not header or not header.startswith("bytes "):
        return None
    try:
        return int(header[6:].split("-", 1)[0])
    except ValueError:
        return None


def _redirect_loop(exc: BaseException) -> bool:
    import httpx2

    return isinstance(exc, httpx2.TooManyRedirects)


def _transient(exc: BaseException) -> bool:
    try:
        import httpx2
    except ImportError:  # pragma: no cover - installed with huggingface_hub
        return False
    return isinstance(
        exc, (httpx2.TransportError, httpx2.StreamError, ConnectionError, TimeoutError)
    )


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    text = redact_text(str(exc)) or type(exc).__name__  # httpx names the URL it was given
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, _Retry) else text


def run_jobs(
    fetcher: Fetcher,
    jobs: list[Job],
    workers: int,
    still_needed: Any = None,
    on_done: Any = None,
) -> list[Outcome]:
    """Fetch `jobs`, several at once; the first hard failure stops the others (their partial
    files stay for the next run) and is raised.

    `on_done(outcome)` runs in the worker that placed the file, right after it: the per-file
    bookkeeping (links, stamps) overlaps the other transfers. Run by the main thread, it waited
    for the last transfer (`wait` returns when all are done) and then ran file after file, a
    serial tail that grew with the file count (issue 17). It must be safe to call from several
    threads at once for different files.

    At most `workers` files transfer at once (`Fetcher.slots`), as many as `hf download`'s
    default; twice as many threads run, so that while a fetched file waits for its fsync
    (milliseconds each, tens when other processes write to the same disk) the next transfer
    starts instead of waiting with it."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    if not jobs:
        return []
    outcomes: list[Outcome] = []
    # Biggest first: the long transfers start early and the small ones fill the gaps.
    ordered = sorted(jobs, key=lambda j: -j.size)
    error: BaseException | None = None

    def work(job: Job) -> Outcome:
        outcome = fetcher.run(job, still_needed)
        if on_done is not None:
            on_done(outcome)
        return outcome

    workers = max(1, workers)
    fetcher.slots = threading.Semaphore(workers)
    try:
        with ThreadPoolExecutor(max_workers=min(2 * workers, len(jobs))) as pool:
            futures = {pool.submit(work, job): job for job in ordered}
            pending = set(futures)
            while pending:
                try:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                except BaseException:
                    # Ctrl-C (KeyboardInterrupt) or SystemExit from SIGTERM/SIGHUP arrives here,
                    # in the main thread; leaving the `with` would wait for every running
                    # transfer to end. Stop them at their next block instead: their partial
                    # files stay.
                    fetcher.stop.set()
                    for future in pending:
                        future.cancel()
                    raise
                for future in done:
                    exc = future.exception()
                    if exc is None:
                        outcomes.append(future.result())
                    elif not isinstance(exc, Cancelled) and error is None:
                        error = exc
                        fetcher.stop.set()
    finally:
        fetcher.sync_folders()  # the files placed before a failure are kept durably too
    if error is not None:
        raise error
    return outcomes
