"""What the metrics say, read afresh from the ledger and the home at each scrape or write.

Gauges are figures of the ledger now (packages by state, backlog age, partner health,
key expiry, the audit trail's newest checkpoint); counters and histograms are counts of
its events and times between them (`Tally`), so a restart or a second process sees the
same values. `Publisher` serves them on `metrics.listen` and rewrites `metrics.textfile`
from the daemon's loop. Every metric is listed in docs/operator.md (Monitoring).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Final

from gateway.adapters import ledger_stats, quarantine
from gateway.adapters.dropserver import DropServer
from gateway.adapters.gpg import Keyring
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.adapters.metrics import Exporter, Family, Histogram, loopback
from gateway.core.clock import Clock
from gateway.core.errors import GatewayError
from gateway.core.model import utc
from gateway.core.settings import Settings

log = logging.getLogger("gateway")
#: Seconds from intake to delivery: a small package goes in seconds, a partner that was
#: down for a day in a day.
TO_DELIVERED: Final = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400)
#: Seconds from intake to the partner's receipt: partners answer in minutes to days.
TO_ACKNOWLEDGED: Final = (
    60,
    300,
    900,
    3600,
    4 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    3 * 86400,
    7 * 86400,
)
#: Event actions counted as a delivery's set-back, by the label they get.
SETBACKS: Final = ("retry.scheduled", "give-up", "hold")


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


class Tally:
    """The audit trail's events counted by (action, partner), and the times from intake to
    delivery and to receipt, read from where the last reading stopped: the trail only
    grows (its hash chain allows nothing else), so each event is read once by a process,
    and a restart reads them all again and finds the same values."""

    def __init__(self) -> None:
        self.after = 0
        self.counts: Counter[tuple[str, str]] = Counter()
        self.delivered: dict[str, Histogram] = {}
        self.acknowledged: dict[str, Histogram] = {}
        self._lock = threading.Lock()  # a scrape and the daemon's textfile may come together

    def update(self, ledger: Ledger) -> Tally:
        """Read the events recorded since the last update; return self."""
        with self._lock:
            while rows := ledger_stats.events_since(ledger, self.after):
                for _, action, partner, state, seconds in rows:
                    self.counts[(action, partner)] += 1
                    if action == "deliver":
                        self.delivered.setdefault(partner, Histogram(TO_DELIVERED)).observe(seconds)
                    elif action == "receipt" and state == "acknowledged":
                        self.acknowledged.setdefault(partner, Histogram(TO_ACKNOWLEDGED)).observe(
                            seconds
                        )
                self.after = rows[-1][0]
        return self


class Gather:
    """The gateway's metrics now; `drop_server` is the daemon's, for its sessions."""

    def __init__(self, home: Home, ledger: Ledger, keyring: Keyring, settings: Settings,
                 clock: Clock, drop_server: DropServer | None = None) -> None:  # fmt: skip
        self.home = home
        self.ledger = ledger
        self.keyring = keyring
        self.settings = settings
        self.clock = clock
        self.drop_server = drop_server
        self.tally = Tally()

    def __call__(self) -> list[Family]:
        """Every family, with its samples as they stand."""
        return [
            *self.packages(),
            *self.events(),
            *self.partners(),
            *self.keys(),
            *self.home_figures(),
        ]

    def packages(self) -> list[Family]:
        now = self.clock.now()
        counts = self.ledger.counts(utc(now - self.settings.receipts_overdue_after_seconds))
        oldest = ledger_stats.oldest_pending(self.ledger)
        return [
            Family("gauge", "gateway_packages", "Packages in the ledger by partner and state.", ("partner", "state"),
                   [((p or "", s), n) for (p, s), n in counts.items() if s != "overdue"]),
            Family("gauge", "gateway_packages_overdue",
                   "Delivered packages with no receipt after receipts.overdue_after_seconds.", ("partner",),
                   [((p or "",), n) for (p, s), n in counts.items() if s == "overdue"]),
            Family("gauge", "gateway_backlog_oldest_age_seconds",
                   "Age of the oldest outbound package taken in and not yet delivered (received, sealed, "
                   "published).", ("partner",), [((p,), max(0.0, now - _epoch(at))) for p, at in oldest.items()]),
        ]  # fmt: skip

    def events(self) -> list[Family]:
        tally = self.tally.update(self.ledger)
        checkpoint = ledger_stats.last_event(self.ledger, "audit.checkpoint")
        return [
            Family("counter", "gateway_deliveries", "Packages delivered, by partner.", ("partner",),
                   [((p,), n) for (a, p), n in tally.counts.items() if a == "deliver"]),
            Family("counter", "gateway_delivery_setbacks",
                   "Deliveries set back: a retry scheduled, given up (failed) or held.", ("partner", "action"),
                   [((p, a), n) for (a, p), n in tally.counts.items() if a in SETBACKS]),
            Family("counter", "gateway_inbound", "Partners' packages accepted or rejected.", ("partner", "outcome"),
                   [((p, {"accept": "accepted", "reject": "rejected"}[a]), n)
                    for (a, p), n in tally.counts.items() if a in ("accept", "reject")]),
            Family("histogram", "gateway_to_delivered_seconds", "Seconds from intake to delivery.",
                   ("partner",), histograms=[((p,), h) for p, h in sorted(tally.delivered.items())]),
            Family("histogram", "gateway_to_acknowledged_seconds",
                   "Seconds from intake to the partner's receipt saying accepted.", ("partner",),
                   histograms=[((p,), h) for p, h in sorted(tally.acknowledged.items())]),
            Family("gauge", "gateway_audit_checkpoint_age_seconds",
                   "Seconds since the audit trail's newest signed checkpoint.", (),
                   [((), max(0.0, self.clock.now() - _epoch(checkpoint)))] if checkpoint else []),
        ]  # fmt: skip

    def partners(self) -> list[Family]:
        partners = self.ledger.partners()
        contacts = self.ledger.contacts()
        known = [(p, contacts[p.id]) for p in partners if p.id in contacts]
        sessions = [((p.id,), float(self.drop_server.sessions_of(p.id)))
                    for p in partners if p.transport == "pull"] if self.drop_server else []  # fmt: skip
        return [
            Family("gauge", "gateway_partner_up", "1 if the last contact with the partner succeeded, 0 if it "
                   "failed; absent before any contact.", ("partner",),
                   [((p.id,), float(c.status == "ok")) for p, c in known]),
            Family("gauge", "gateway_partner_last_contact_timestamp_seconds",
                   "When the last successful contact with the partner was.", ("partner",),
                   [((p.id,), c.last_ok) for p, c in known if c.last_ok]),
            Family("gauge", "gateway_partner_down_since_timestamp_seconds",
                   "Since when the partner cannot be reached; absent while it can.", ("partner",),
                   [((p.id,), c.down_since) for p, c in known if c.down_since]),
            Family("gauge", "gateway_drop_sessions", "Drop-server sessions open now, by pull partner.",
                   ("partner",), sessions),
        ]  # fmt: skip

    def keys(self) -> list[Family]:
        values: list[tuple[tuple[str, ...], float]] = []
        owners = [("gateway", self.ledger.own_key())] + [
            (p.id, p.openpgp_key) for p in self.ledger.partners()
        ]
        for owner, fingerprint in owners:
            try:
                key = self.keyring.key(str(fingerprint))
            except GatewayError:
                continue  # `doctor` says what is wrong with it
            expires = min((t for t in (key.expires, key.encryption_expires) if t), default=None)
            if expires:
                values.append(((owner, key.fingerprint), float(expires)))
        return [Family("gauge", "gateway_key_expiry_timestamp_seconds",
                       "When each key in use (the gateway's own, each partner's) or its encryption subkey "
                       "expires; keys that never expire are absent.", ("owner", "fingerprint"), values)]  # fmt: skip

    def home_figures(self) -> list[Family]:
        return [Family("gauge", "gateway_quarantined", "Entries in spool/quarantine/.", (),
                       [((), float(quarantine.count(self.home.quarantine)))])]  # fmt: skip


class Publisher:
    """Serves the metrics on `metrics.listen` and rewrites `metrics.textfile` every
    `metrics.textfile_seconds`, from the daemon's loop (`tick`)."""

    def __init__(self, exporter: Exporter, settings: Settings, clock: Clock) -> None:
        self.exporter = exporter
        self.settings = settings
        self.clock = clock
        self.listen = loopback(settings.metrics_listen) if settings.metrics_listen else None
        self.textfile = Path(settings.metrics_textfile) if settings.metrics_textfile else None
        self._next = 0.0
        self._failing = False

    def start(self) -> None:
        """Start serving, if `metrics.listen` is set."""
        if self.listen:
            self.exporter.serve(*self.listen)

    def tick(self) -> None:
        """Rewrite the textfile if it is due. A file that cannot be written is logged when
        it starts failing and when it works again, not at every turn."""
        if not self.textfile or self.clock.monotonic() < self._next:
            return
        self._next = self.clock.monotonic() + self.settings.metrics_textfile_seconds
        try:
            self.exporter.write(self.textfile)
        except OSError as err:
            if not self._failing:
                log.warning("cannot write metrics.textfile %s (%s): check the folder exists and "
                            "the gateway's user may write it; trying again", self.textfile, err.strerror or err)  # fmt: skip
            self._failing = True
        else:
            if self._failing:
                log.info("metrics.textfile %s written again", self.textfile)
            self._failing = False

    def stop(self) -> None:
        """Stop serving; write the textfile one last time."""
        self.exporter.stop()
        if self.textfile:
            self.exporter.write(self.textfile)
