"""Prometheus metrics of the synthesis service (`GET /metrics`).

Each app owns its own registry: one service per process in production, several apps in
one test process without "duplicated timeseries" errors.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

# first audio: the goal is well under 500 ms; buckets resolve the range that matters
_LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
# real-time factor: synthesis time / audio time; below 1 keeps up with playback
_RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """The service's instruments. `endpoint` labels are "speech" (HTTP audio) and "room"."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.first_audio_seconds = Histogram(
            "localtts_first_audio_seconds",
            "Time from the start of synthesis to the first audio chunk",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.real_time_factor = Histogram(
            "localtts_real_time_factor",
            "Synthesis time divided by the duration of the audio produced",
            ["endpoint"],
            buckets=_RTF_BUCKETS,
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "localtts_audio_seconds",
            "Seconds of audio produced",
            ["endpoint"],
            registry=self.registry,
        )
        self.active_streams = Gauge(
            "localtts_active_streams",
            "Syntheses in progress",
            ["endpoint"],
            registry=self.registry,
        )
        self.room_queue_depth = Gauge(
            "localtts_room_queue_depth",
            "Utterances waiting for their turn in a room (the one playing excluded)",
            ["room"],
            registry=self.registry,
        )
        self.rooms_joined = Gauge(
            "localtts_rooms_joined",
            "LiveKit rooms the service is connected to",
            registry=self.registry,
        )
        self.errors = Counter(
            "localtts_errors",
            "Failed requests and syntheses by kind",
            ["kind"],
            registry=self.registry,
        )

    def observe_synthesis(
        self, endpoint: str, *, first_audio_s: float | None, synthesis_s: float, audio_s: float
    ) -> None:
        """Record one finished synthesis."""
        if first_audio_s is not None:
            self.first_audio_seconds.labels(endpoint).observe(first_audio_s)
        if audio_s > 0:
            self.real_time_factor.labels(endpoint).observe(synthesis_s / audio_s)
            self.audio_seconds.labels(endpoint).inc(audio_s)

    def set_queue_depth(self, room: str, depth: int) -> None:
        self.room_queue_depth.labels(room).set(depth)

    def forget_room(self, room: str) -> None:
        """Drop a left room's series: room names are unbounded, the registry must not be."""
        try:
            self.room_queue_depth.remove(room)
        except KeyError:
            pass

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
