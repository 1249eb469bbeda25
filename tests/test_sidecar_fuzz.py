"""Whatever a client sends to an inference path, it is forwarded untouched and counted once."""

from __future__ import annotations

import json

import aiohttp
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.http import serving
from support.ports import LOOPBACK
from support.sidecar import running_sidecar

PATHS = (
    "/v2/models/m/infer",
    "/v2/models/m/versions/1/infer",
    "/v1/models/m:predict",
    "/predictions/m",
    "/invocations",
    "/api/v1.0/predictions",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/anything/else",
)
CONTENT_TYPES = ("application/json", "text/csv", "application/octet-stream", "text/plain", "")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Bodies that look like what each parser expects, broken ones, and plain noise.
bodies = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.fixed_dictionaries({"shape": st.lists(json_values, max_size=3)}), max_size=2
            ),
            "instances": json_values,
            "model": json_values,
            "stream": json_values,
            "data": json_values,
        }
    ).map(lambda v: json.dumps(v).encode()),
    st.tuples(json_values, st.integers(0, 40)).map(lambda t: json.dumps(t[0]).encode()[: t[1]]),
    st.text(max_size=200).map(lambda t: t.replace(",", "\n").encode()),
)


async def echo(request: web.Request) -> web.StreamResponse:
    return web.Response(body=await request.read(), content_type="application/octet-stream")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    requests=st.lists(
        st.tuples(
            st.sampled_from(PATHS),
            bodies,
            st.sampled_from(CONTENT_TYPES),
            st.sampled_from(("", "1", "abc", "10")),
        ),
        min_size=1,
        max_size=5,
    )
)
async def test_any_body_is_forwarded_untouched_and_counted_once(
    requests: list[tuple[str, bytes, str, str]],
) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    async with (
        serving(app, shutdown_timeout=0.1) as upstream,
        running_sidecar(upstream, upstream_ready_path="") as sidecar,
        aiohttp.ClientSession() as session,
    ):
        for path, body, content_type, triton_header in requests:
            headers = {"Content-Type": content_type} if content_type else {}
            if triton_header:
                headers["Inference-Header-Content-Length"] = triton_header
            async with session.post(
                f"http://{LOOPBACK}:{sidecar.proxy_port}{path}", data=body, headers=headers
            ) as resp:
                assert resp.status == 200
                assert await resp.read() == body
    counted = sum(
        s.value
        for family in sidecar.registry.collect()
        if family.name == "model_inference"
        for s in family.samples
        if s.name == "model_inference_total"
    )
    assert counted == len(requests)
