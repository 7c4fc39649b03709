"""The demo cluster ``mirrord sandbox up`` builds: a web pod and an api pod it talks to."""

from __future__ import annotations

from mirrord_core.sandbox.pod import PodSpec

DEMO_NAME = "demo"


def demo_pods() -> list[PodSpec]:
    """Two pods: ``web`` (the usual mirrord target) and ``api`` (a service it calls)."""
    return [
        PodSpec(
            name="web",
            env={
                "PATH": "/bin",
                "HOSTNAME": "web",
                "GREETING": "hello from the web pod",
                "DATABASE_URL": "postgres://db.default.svc.cluster.local:5432/shop",
                "API_URL": "http://api.default.svc.cluster.local:8080/",
            },
            files={
                "/app/config.yaml": "service: web\nport: 8080\nfeature_flags: [checkout-v2]\n",
                "/app/data/orders.csv": "id,total\n1,9.99\n2,24.50\n",
            },
            www={"index.html": "web pod says hi\n"},
        ),
        PodSpec(
            name="api",
            env={"PATH": "/bin", "HOSTNAME": "api", "ROLE": "api"},
            www={"index.html": "hello from the api pod\n", "health": "ok\n"},
        ),
    ]
