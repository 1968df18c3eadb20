"""Taking files in: from `gateway send` (a copy) or from the outbound spool (a move).

Nothing taken in is ever lost or taken twice. Bad entries go to `spool/quarantine/` with
a reason file and a ledger entry; a link is moved, never followed, and its target never
read. Where a crash can fall, and what the next start (`recover`) does:

| step | crash after | the spool holds | the next start |
|---|---|---|---|
| move | `origin.json` written | `work/<id>/origin.json`, the file still in `outbound/` | removes the folder; the file is taken again |
| move | the rename | `work/<id>/` with `origin.json` and `payload` | records the package `received` (or quarantines it) |
| move, with a sidecar | the rename | as above, the sidecar's content in `origin.json`, the sidecar still in `outbound/` | as above, with the sidecar's content; removes the sidecar if it is unchanged |
| copy (`send`) | the mark, during the copy | `work/.<id>.writing`, `work/<id>/` partly written | removes both once no live `send` holds the mark; `send` printed no id |
| copy (`send`) | the ledger's `received` | `work/<id>/`, the mark | removes the mark; the package is sealed |

A `send` running beside a starting daemon holds its mark (an flock) from before its
folder exists until the package is in the ledger, so recovery never removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Final, NamedTuple

from gateway.adapters import quarantine
from gateway.adapters.files import (
    fsync_dir,
    open_regular,
    owner,
    publish,
    write_atomic,
    write_flushed,
)
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.adapters.lock import being_written, writing
from gateway.adapters.obligations import Terms
from gateway.core.approval import needs_approval
from gateway.core.duties import MAX_SIDECAR_BYTES, SIDECAR, Declared, parse_sidecar
from gateway.core.errors import (
    GatewayError,
    InputRefused,
    UnknownPartner,
)
from gateway.core.lifecycle import State
from gateway.core.model import Package, Progress, utc
from gateway.core.names import kind as parse_kind
from gateway.core.names import new_package_id, payload_name
from gateway.core.settings import Settings
from gateway.pipeline.duties import Duties

log = logging.getLogger("gateway")
PAYLOAD: Final = "payload"
ORIGIN: Final = "origin.json"
#: `spool/work/.<package_id>.writing`: a `gateway send` is copying that package in.
MARK: Final = ".writing"
CHUNK: Final = 1024 * 1024


class Admission(NamedTuple):
    """A package checked and ready to be recorded: its row, its event's detail, its duty."""

    package: Package
    detail: dict[str, Any]
    terms: Terms


def _ignore(_: int) -> None:
    """No progress to show."""


class Intake:
    """Takes files into the gateway's own area and records them `received`."""

    def __init__(self, home: Home, ledger: Ledger, settings: Settings, duties: Duties) -> None:
        self.home = home
        self.ledger = ledger
        self.settings = settings
        self.duties = duties
        #: Files moved in whose recording failed for the host's reason (the ledger busy, a
        #: regimes file being mended): the spool no longer shows them, so each scan tries
        #: them again (`finish_stranded`), and a daemon's start finds them (`recover`).
        self._stranded: set[str] = set()

    def copy_in(
        self,
        source: Path,
        partner: str,
        kind: str,
        declared: Declared | None = None,
        progress: Progress | None = None,
    ) -> Package:
        """Take a copy of `source` (`gateway send`); the original is left alone. With
        `progress`, the copy and the hash of the copy are shown as they go."""
        name = payload_name(source.name)
        self._partner(partner)
        kind = parse_kind(kind)
        try:
            fd = open_regular(source, single_link=False)
        except InputRefused as problem:
            raise InputRefused(f"{source}: {problem}") from None
        if os.fstat(fd).st_size > self.settings.daemon_max_package_bytes:
            os.close(fd)
            raise InputRefused(
                f"{source} is larger than daemon.max_package_bytes: split it or raise the limit"
            )
        pid = new_package_id(self.settings.gateway_id, self.ledger.clock.now())
        folder = self.home.work / pid
        # Marked as being written before the folder exists: a daemon starting beside this
        # `send` leaves the folder alone until the package is in the ledger.
        size = os.fstat(fd).st_size
        shown = progress(f"taking in {source.name}", 2 * size) if progress else nullcontext(_ignore)
        with os.fdopen(fd, "rb") as src, writing(self._mark(pid)):
            folder.mkdir(mode=0o700)
            try:
                with shown as advance:  # ended before the ledger's log line is written
                    with (folder / f".{PAYLOAD}.tmp").open("wb") as dst:
                        while chunk := src.read(CHUNK):
                            dst.write(chunk)
                            advance(len(chunk))
                    publish(folder / f".{PAYLOAD}.tmp", folder / PAYLOAD)
                    hashed = self._hash(pid, advance)
                admission = self._admission(
                    pid, partner, kind, name, declared or Declared(), hashed
                )
                return self._admit(admission)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise

    def move_in(self, path: Path, partner: str, kind: str) -> str | None:
        """Move a file from the outbound spool into the gateway's area, with its sidecar's
        content, and return its package id for `record`; None when there is nothing to
        record: the entry was quarantined with the reason, or it is a sidecar, which waits
        for its file (`lone_sidecar`)."""
        if path.name.endswith(SIDECAR):
            self.lone_sidecar(path, partner, kind)
            return None
        pid = new_package_id(self.settings.gateway_id, self.ledger.clock.now())
        sidecar = path.with_name(path.name + SIDECAR)
        has_sidecar = os.path.lexists(sidecar)
        try:
            name = payload_name(os.fsencode(path.name))
            self._partner(partner)
            parse_kind(kind)
            declared = read_sidecar(sidecar) if has_sidecar else {}
        except GatewayError as problem:
            self.quarantine(path, pid, partner, kind, str(problem),
                            sidecar=sidecar if has_sidecar else None)  # fmt: skip
            return None
        folder = self.home.work / pid
        folder.mkdir(mode=0o700)
        try:
            # Who dropped it, as far as the spool can tell: the account owning the file.
            origin = {"partner": partner, "kind": kind, "name": name, "declared": declared,
                      "sidecar": sidecar.name if has_sidecar else None, "dropped_by": owner(path)}  # fmt: skip
            # Whole before the move, so no rename of its own: a folder without the payload
            # is removed by `recover`.
            write_flushed(folder / ORIGIN, json.dumps(origin).encode())
            os.rename(path, folder / PAYLOAD)  # moves a link or FIFO itself, never its target
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)  # nothing was taken: the file stays put
            raise
        fsync_dir(folder)
        self._stranded.add(pid)  # not in the ledger until `record` says so
        self._drop_sidecar(origin)  # its content is in origin.json: taken with the file
        return pid

    def record(self, pids: list[str]) -> list[Package]:
        """Record files moved in, in one commit; quarantine each that is refused. The spool
        folders they left are flushed first: after a crash no file is both in the spool and
        in the ledger. If the host fails, they are recorded at a later scan
        (`finish_stranded`) or start (`recover`)."""
        if not pids:
            return []
        origins = {pid: json.loads((self.home.work / pid / ORIGIN).read_text()) for pid in pids}
        for folder in {self.home.outbound / o["partner"] / o["kind"] for o in origins.values()}:
            with contextlib.suppress(FileNotFoundError):  # removed since: nothing to flush
                fsync_dir(folder)
        refused, admitted = [], []
        for pid, origin in origins.items():
            try:
                declared = Declared.of(origin.get("declared", {}))
                admitted.append(self._admission(pid, origin["partner"], origin["kind"], origin["name"],
                                                declared, dropped_by=origin.get("dropped_by")))  # fmt: skip
            except InputRefused as problem:
                refused.append(self._refuse(pid, origin, problem))
        with self.ledger.transaction():
            for admission in admitted:
                self._admit(admission)
        self._stranded.difference_update(pids)
        return [*refused, *(admission.package for admission in admitted)]

    def finish_stranded(self) -> list[Package]:
        """Record (or quarantine) the files moved in whose recording failed; if it fails
        again, they are tried at the next call."""
        pids = [pid for pid in sorted(self._stranded)
                if self.ledger.find(pid) is None and (self.home.work / pid / ORIGIN).is_file()]  # fmt: skip
        self._stranded.intersection_update(pids)
        try:
            return self.record(pids)
        except Exception as err:  # still the host's trouble: the next scan tries again
            log.warning("%s: moved in, still not recorded (%s); trying again at the next scan",
                        ", ".join(pids), err)  # fmt: skip
            return []

    def lone_sidecar(self, path: Path, partner: str, kind: str) -> Package | None:
        """A sidecar is taken with its file; one alone waits duties.lone_sidecar_seconds for
        it (a producer may write the sidecar first), then is quarantined."""
        if os.path.lexists(path.with_name(path.name.removesuffix(SIDECAR))):
            return None
        age = self.ledger.clock.now() - os.lstat(path).st_mtime
        if age < self.settings.duties_lone_sidecar_seconds:
            return None
        pid = new_package_id(self.settings.gateway_id, self.ledger.clock.now())
        return self.quarantine(path, pid, partner, kind, (
            f"a sidecar with no file beside it for {int(age)} s: its file was taken before it "
            "arrived (drop the sidecar first) or never came; drop both again"))  # fmt: skip

    def _drop_sidecar(self, origin: dict[str, Any]) -> None:
        """Remove a sidecar whose content was taken with its file (after a crash, only if
        it is still the same)."""
        if not origin.get("sidecar"):
            return
        path = self.home.outbound / origin["partner"] / origin["kind"] / origin["sidecar"]
        try:
            same = read_sidecar(path) == origin["declared"]
        except (GatewayError, OSError):
            return
        if same:
            path.unlink()

    def recover(self) -> list[Package]:
        """Finish what a crash interrupted: work folders with no ledger entry.

        A folder that a live `gateway send` is still writing is left alone; one whose
        writer died, or a move whose rename never happened, is removed (the producer's
        file is still where it was, or `send` printed no id); a moved file not yet
        recorded is recorded.
        """
        moved = []
        for entry in sorted(self.home.work.iterdir()):
            if entry.name.startswith("."):
                if not entry.name.endswith(MARK):  # a temporary file of a run that was cut short
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                continue
            if self.ledger.find(entry.name) is not None or being_written(self._mark(entry.name)):
                continue
            if (entry / ORIGIN).is_file() and os.path.lexists(entry / PAYLOAD):
                self._drop_sidecar(json.loads((entry / ORIGIN).read_text()))
                moved.append(entry.name)
            else:  # a copy whose writer died, or a move that never happened
                shutil.rmtree(entry)
        for mark in self.home.work.glob(f".*{MARK}"):
            being_written(mark)  # removes the marks of writers that died
        return self.record(moved)

    def _mark(self, pid: str) -> Path:
        return self.home.work / f".{pid}{MARK}"

    def _refuse(self, pid: str, origin: dict[str, Any], problem: InputRefused) -> Package:
        """Quarantine a moved-in file that may not go, with its sidecar's content."""
        folder = self.home.work / pid
        package = self.quarantine(folder / PAYLOAD, pid, origin["partner"], origin["kind"],
                                  str(problem), name=origin["name"])  # fmt: skip
        if origin.get("sidecar"):  # taken with the file: kept with it, as it was declared
            write_atomic(self.home.quarantine / f"{pid}{SIDECAR}",
                         json.dumps(origin["declared"], indent=2).encode())  # fmt: skip
        shutil.rmtree(folder)
        return package

    def _hash(self, pid: str, advance: Callable[[int], None] = _ignore) -> tuple[str, int]:
        """The SHA-256 and size of a payload in the work folder, checked against the limits."""
        fd = open_regular(self.home.work / pid / PAYLOAD, single_link=True)
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                advance(len(chunk))
                if size > self.settings.daemon_max_package_bytes:
                    raise InputRefused(
                        f"the file is larger than daemon.max_package_bytes "
                        f"({self.settings.daemon_max_package_bytes}): split it or raise the limit"
                    )
        if size == 0:
            raise InputRefused("the file is empty: nothing to send")
        return digest.hexdigest(), size

    def _admission(self, pid: str, partner: str, kind: str, name: str, declared: Declared,
                   hashed: tuple[str, int] | None = None,
                   dropped_by: str | None = None) -> Admission:  # fmt: skip
        """Hash a payload already in the work folder (unless `hashed`) and check that it
        may go: the package to record `received` (or `awaiting-approval` when the partner
        needs a second operator's approval for its kind), with its legal basis and duty;
        InputRefused if the partner may not receive it."""
        sha256, size = hashed or self._hash(pid)
        admitted = self.duties.admit(partner, kind, declared, pid)
        now = utc(self.ledger.clock.now())
        approval = needs_approval(self.ledger.partner(partner).approval, kind)
        package = Package(
            package_id=pid,
            direction="out",
            state=State.AWAITING_APPROVAL if approval else State.RECEIVED,
            created_at=now,
            updated_at=now,
            partner=partner,
            kind=kind,
            payload_name=name,
            payload_size=size,
            payload_sha256=sha256,
            reference=declared.reference,
            legal_basis=admitted.regime.id,
            marking=declared.marking,
            in_reply_to=declared.in_reply_to,
        )
        detail = {"name": name, "size": size, "sha256": package.payload_sha256,
                  "legal_basis": admitted.regime.id, "duty": admitted.terms.duty,
                  "due_at": admitted.terms.due_at, "supersedes": declared.supersedes,
                  "dropped_by": dropped_by}  # fmt: skip
        return Admission(package, {k: v for k, v in detail.items() if v}, admitted.terms)

    def _admit(self, admission: Admission) -> Package:
        """Record an admitted package with its duty."""
        with self.ledger.transaction():
            self.ledger.insert(admission.package, "intake", admission.detail)
            self.duties.obligations.add(admission.terms)
        return admission.package

    def _partner(self, partner: str) -> None:
        try:
            self.ledger.partner(partner)
        except UnknownPartner:
            raise UnknownPartner(
                f"unknown partner {partner}: register it with `gateway partner add`"
            ) from None

    def quarantine(self, path: Path, pid: str, partner: str | None, kind: str | None,
                   reason: str, name: str | None = None, sidecar: Path | None = None) -> Package:  # fmt: skip
        """Move a rejected entry to quarantine with `<pid>.reason.json`, and its sidecar
        as `<pid>.meta.json` beside it; record it `rejected`."""
        original = name or os.fsencode(path.name).decode("utf-8", "backslashreplace")
        now = utc(self.ledger.clock.now())
        report = quarantine.put(self.home.quarantine, path, pid, {
            "package_id": pid, "original_name": original, "partner": partner, "kind": kind,
            "reason": reason, "at": now,
            "what_to_do": "fix the file as the reason says and drop it again; "
                          "delete this entry and its reason file once dealt with",
        })  # fmt: skip
        if sidecar is not None:
            quarantine.put(self.home.quarantine, sidecar, pid + SIDECAR, {
                "package_id": pid, "original_name": sidecar.name, "partner": partner,
                "kind": kind, "reason": reason, "at": now,
                "what_to_do": f"the sidecar of {original}, quarantined with it: fix and drop both again",
            })  # fmt: skip
        known = partner if partner and self._known(partner) else None
        package = Package(package_id=pid, direction="out", state=State.REJECTED, created_at=now,
                          updated_at=now, partner=known, kind=kind, last_error=reason)  # fmt: skip
        detail = {"name": original, "what": report["what"], "reason": reason, "partner": partner}
        if sidecar is not None:
            detail["sidecar"] = sidecar.name
        return self.ledger.insert(package, "quarantine", detail)

    def _known(self, partner: str) -> bool:
        try:
            self.ledger.partner(partner)
        except UnknownPartner:
            return False
        return True


def read_sidecar(path: Path) -> dict[str, Any]:
    """A sidecar's declarations, checked, as plain values; InputRefused if it is bad."""
    try:
        fd = open_regular(path, single_link=True)
    except InputRefused as problem:
        raise InputRefused(f"the sidecar {path.name}: {problem}") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_SIDECAR_BYTES + 1)
    try:
        declared = parse_sidecar(data)
    except InputRefused as problem:
        raise InputRefused(f"{path.name}: {problem}") from None
    return declared.plain()
