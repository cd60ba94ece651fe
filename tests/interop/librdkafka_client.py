"""librdkafka (confluent-kafka from PyPI) as the other client in tests/interop.rs.

    librdkafka_client.py produce BROKERS TOPIC CODEC COUNT
        COUNT records keyed key-0.. (value value-i), partitioned with
        murmur2_random (Java's; librdkafka's default is CRC32), compressed with CODEC
    librdkafka_client.py transactions BROKERS TOPIC CODEC COUNT
        a transaction of COUNT records "aborted-i" that is aborted, then one of
        COUNT records "committed-i" that is committed
    librdkafka_client.py send BROKERS TOPIC CODEC KEY VALUE
        one record, murmur2-partitioned, compressed with CODEC
    librdkafka_client.py consume BROKERS TOPIC COUNT [ISOLATION]
        reads COUNT records from the start in a group of its own and prints one
        JSON line per record: partition, offset, key, value, headers; ISOLATION
        is read_committed (librdkafka's default) or read_uncommitted

Exits non-zero with a message on any error.
"""

import json
import sys
import uuid

from confluent_kafka import Consumer, KafkaException, Producer


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def delivered(err, _msg):
    if err is not None:
        fail(f"delivery failed: {err}")


def produce(brokers, topic, codec, count):
    p = Producer({"bootstrap.servers": brokers, "compression.type": codec,
                  "linger.ms": 5, "enable.idempotence": True,
                  "partitioner": "murmur2_random"})
    for i in range(count):
        p.produce(topic, key=f"key-{i}", value=f"value-{i}",
                  headers=[("origin", b"librdkafka")], on_delivery=delivered)
    if p.flush(30) != 0:
        fail("records left unsent after 30 s")


def send(brokers, topic, codec, key, value):
    p = Producer({"bootstrap.servers": brokers, "compression.type": codec,
                  "enable.idempotence": True, "partitioner": "murmur2_random"})
    p.produce(topic, key=key, value=value, on_delivery=delivered)
    if p.flush(30) != 0:
        fail("the record was not sent within 30 s")


def transactions(brokers, topic, codec, count):
    p = Producer({"bootstrap.servers": brokers, "compression.type": codec,
                  "transactional.id": f"interop-{uuid.uuid4()}"})
    p.init_transactions(30)
    for outcome in ("aborted", "committed"):
        p.begin_transaction()
        for i in range(count):
            p.produce(topic, key=f"key-{i}", value=f"{outcome}-{i}", on_delivery=delivered)
        p.flush(30)
        if outcome == "aborted":
            p.abort_transaction(30)
        else:
            p.commit_transaction(30)


def consume(brokers, topic, count, isolation="read_committed"):
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"interop-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": isolation})
    c.subscribe([topic])
    seen = 0
    idle = 0
    while seen < count:
        msg = c.poll(1.0)
        if msg is None:
            idle += 1
            if idle > 60:
                fail(f"only {seen} of {count} records within 60 s")
            continue
        if msg.error():
            raise KafkaException(msg.error())
        idle = 0
        seen += 1
        print(json.dumps({
            "partition": msg.partition(),
            "offset": msg.offset(),
            "key": None if msg.key() is None else msg.key().decode(),
            "value": None if msg.value() is None else msg.value().decode(),
            "headers": {k: v.decode() for k, v in (msg.headers() or [])},
        }), flush=True)
    c.close()


def main(args):
    if len(args) < 3:
        fail(__doc__)
    command, brokers, topic, rest = args[0], args[1], args[2], args[3:]
    if command == "produce":
        produce(brokers, topic, rest[0], int(rest[1]))
    elif command == "send":
        send(brokers, topic, rest[0], rest[1], rest[2])
    elif command == "transactions":
        transactions(brokers, topic, rest[0], int(rest[1]))
    elif command == "consume":
        consume(brokers, topic, int(rest[0]), *rest[1:2])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
