import asyncio, time, aiohttp
from tests.retry.test_crash import GatewayProcess, KEYS, auth, create_app  # noqa
from tests.retry import test_crash as tc

async def test_dbg(aiohttp_server, redis_server, tmp_path):
    app = create_app(api_key=KEYS["aelyst"], data_file=tc._seed(tmp_path / "a.yaml"), rate_limit=False)
    server = await aiohttp_server(app)
    await tc._fault_449(server)
    config = tc._config(str(server.make_url("/v1")).rstrip("/"), redis_server.url)
    gw = GatewayProcess(config, tmp_path, "gw")
    await gw.start()
    try:
        async with aiohttp.ClientSession() as s:
            for n in (1, 1, 10, 40, 40, 40):
                t = time.monotonic()
                async def one(c, a):
                    body = {"contact": {"id": str(c)}, "assignee": {"id": a}}
                    async with s.post(gw.url + "/v1/assign", json=body, headers=auth()) as r:
                        return r.status, round(time.monotonic() - t, 3)
                print(n, await asyncio.gather(*(one(1000 + i, str(17 + n % 2)) for i in range(n))))
    finally:
        await gw.stop()
