#!/usr/bin/python3
"""A third-party AMQP client for the broker test: publishes with confirms and consumes with
manual acks through pika (Debian's python3-pika), carrying order ids three real ways.

  amqp_pika.py PORT TAG

Nothing touches the network before a "go" line arrives on stdin, so the test can make sure
the agent traces the process first. TAG only makes the command line unique.
"""
import json
import sys

import pika

EXCHANGE, QUEUE = "shop.test-orders", "pika.test-orders"


def main():
    port = int(sys.argv[1])
    if sys.stdin.readline().strip() != "go":
        return
    params = pika.ConnectionParameters(host="127.0.0.1", port=port, heartbeat=0)
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, exchange_type="topic")
    ch.queue_declare(QUEUE)
    ch.queue_bind(QUEUE, EXCHANGE, routing_key="orders.*")
    ch.confirm_delivery()
    messages = [
        (pika.BasicProperties(message_id="m-1", correlation_id="SO-P1"), {"note": "a"}),
        (pika.BasicProperties(message_id="m-2", headers={"x-order-id": "SO-P2"}), {}),
        (pika.BasicProperties(message_id="m-3", content_type="application/json"),
         {"orderRef": "SO-P3", "pad": "x" * 3000}),
    ]
    for props, body in messages:
        ch.basic_publish(EXCHANGE, "orders.eu", json.dumps(body).encode(), props,
                         mandatory=True)
    # One pulled, two pushed; every one acknowledged.
    method, _, _ = ch.basic_get(QUEUE, auto_ack=False)
    ch.basic_ack(method.delivery_tag)
    seen = []

    def on_message(channel, method, _props, _body):
        channel.basic_ack(method.delivery_tag)
        seen.append(method.delivery_tag)
        if len(seen) == 2:
            channel.stop_consuming()

    ch.basic_consume(QUEUE, on_message, auto_ack=False)
    ch.start_consuming()
    conn.close()
    print("done", flush=True)


main()
