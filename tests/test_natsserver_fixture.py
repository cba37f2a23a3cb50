import nats

from tests.natsserver import NatsServer


async def test_fixture_serves_jetstream(nats_server: NatsServer) -> None:
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        kv = await js.create_key_value(bucket="T")
        await kv.put("a", b"1")
        assert (await kv.get("a")).value == b"1"
    finally:
        await client.close()
