//! The MES's and the CRM's side of the broker: one AMQP connection per service (lapin), a
//! publishing channel with publisher confirms, consumers with manual acks. Each message is
//! written to the message log and reported to the queue process for the driver.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use crate::broker::amqp_url;
use crate::messagelog::{self, MessageLogRecord, MessageOutcome, MessageSide};
use crate::net::Ctx;
use crate::queue::{Delivery, Reporter};
use crate::service::Service;

/// How the order id travels in a message, besides wherever the body puts it.
pub enum Carry {
    /// In the `correlation-id` property (and a unique `message-id`).
    CorrelationId,
    /// In the `x-order-id` header and the `message-id` property.
    HeaderAndMessageId,
}

/// A service's connection to the broker, made on first use.
pub struct Amqp {
    ctx: Arc<Ctx>,
    publisher: OnceCell<(Connection, Channel)>,
    reporter: Reporter,
}

impl Amqp {
    pub fn new(ctx: Arc<Ctx>) -> Arc<Self> {
        Arc::new(Amqp {
            reporter: Reporter::new(ctx.base_port),
            ctx,
            publisher: OnceCell::new(),
        })
    }

    /// Connects, retrying while the broker starts.
    async fn connect(&self) -> Connection {
        let url = amqp_url(Service::amqp_port(self.ctx.base_port));
        loop {
            let props = ConnectionProperties::default()
                .with_connection_name(self.ctx.service.as_str().into());
            match Connection::connect(&url, props).await {
                Ok(conn) => return conn,
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn channel(&self) -> Option<&Channel> {
        let (_, channel) = self
            .publisher
            .get_or_try_init(|| async {
                let conn = self.connect().await;
                let channel = conn.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                Ok::<_, lapin::Error>((conn, channel))
            })
            .await
            .map_err(|e| eprintln!("{}: no publishing channel: {e}", self.ctx.service))
            .ok()?;
        Some(channel)
    }

    /// Publishes `body` (JSON) for `order_id` as mandatory, waits for the broker's confirm,
    /// logs and reports it under `topic`.
    pub async fn publish(
        &self,
        topic: &str,
        exchange: &str,
        routing_key: &str,
        order_id: &str,
        carry: Carry,
        body: &serde_json::Value,
    ) {
        let Some(channel) = self.channel().await else {
            return;
        };
        let mut props = BasicProperties::default().with_content_type("application/json".into());
        props = match carry {
            Carry::CorrelationId => props
                .with_correlation_id(order_id.into())
                .with_message_id(format!("{topic}-{order_id}").into()),
            Carry::HeaderAndMessageId => {
                let mut headers = FieldTable::default();
                headers.insert("x-order-id".into(), AMQPValue::LongString(order_id.into()));
                props.with_headers(headers).with_message_id(order_id.into())
            }
        };
        let payload = serde_json::to_vec(body).expect("a JSON value always serializes");
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let start = OffsetDateTime::now_utc();
        let confirm = match channel
            .basic_publish(exchange, routing_key, options, &payload, props)
            .await
        {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        let (outcome, state) = match confirm {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {
                (MessageOutcome::Acked, Delivery::Confirmed)
            }
            Ok(Confirmation::Ack(Some(_))) | Ok(Confirmation::Nack(Some(_))) => {
                (MessageOutcome::Returned, Delivery::Returned)
            }
            Ok(Confirmation::Nack(None)) => (MessageOutcome::Nacked, Delivery::Nacked),
            Err(e) => {
                eprintln!("{}: publish of {order_id} failed: {e}", self.ctx.service);
                return;
            }
        };
        self.log(MessageLogRecord {
            service: self.ctx.service,
            side: MessageSide::Publish,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            queue: None,
            order_id: order_id.to_owned(),
            outcome,
            start,
            end: OffsetDateTime::now_utc(),
        });
        self.reporter.report(topic, order_id, state);
    }

    fn log(&self, record: MessageLogRecord) {
        messagelog::append(&self.ctx.message_log, &record);
    }

    /// Consumes `queue` on a channel of its own; `handle` answers each message with the
    /// order it is about, and whether it is acknowledged (`false`: never, the line is
    /// overloaded). Runs until the connection ends.
    pub fn consume<F>(self: &Arc<Self>, topic: &'static str, queue: &'static str, handle: F)
    where
        F: Fn(&AmqpDelivery) -> Option<(String, bool)> + Send + Sync + 'static,
    {
        let amqp = self.clone();
        let handle = Arc::new(handle);
        tokio::spawn(async move {
            // Until the queue process has declared the topology, consuming fails: retry.
            loop {
                if let Err(e) = amqp.consume_once(topic, queue, handle.as_ref()).await {
                    eprintln!("{}: consumer of {queue}: {e}; retrying", amqp.ctx.service);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }

    async fn consume_once<F>(
        &self,
        topic: &'static str,
        queue: &'static str,
        handle: &F,
    ) -> Result<(), lapin::Error>
    where
        F: Fn(&AmqpDelivery) -> Option<(String, bool)>,
    {
        let amqp = self;
        {
            let conn = amqp.connect().await;
            let consumer = async {
                let channel = conn.create_channel().await?;
                let tag = format!("{}:{queue}", amqp.ctx.service);
                let mut consumer = channel
                    .basic_consume(
                        queue,
                        &tag,
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                // Deliveries never acknowledged are kept, as a hung worker keeps them.
                let mut held = Vec::new();
                while let Some(delivery) = consumer.next().await {
                    let delivery = delivery?;
                    let start = OffsetDateTime::now_utc();
                    let Some((order_id, ack)) = handle(&delivery) else {
                        delivery.ack(BasicAckOptions::default()).await?;
                        continue;
                    };
                    let (outcome, state) = if ack {
                        delivery.ack(BasicAckOptions::default()).await?;
                        (MessageOutcome::Acked, Delivery::Delivered)
                    } else {
                        (MessageOutcome::Unacked, Delivery::Held)
                    };
                    amqp.log(MessageLogRecord {
                        service: amqp.ctx.service,
                        side: MessageSide::Consume,
                        exchange: delivery.exchange.as_str().to_owned(),
                        routing_key: delivery.routing_key.as_str().to_owned(),
                        queue: Some(queue.to_owned()),
                        order_id: order_id.clone(),
                        outcome,
                        start,
                        end: OffsetDateTime::now_utc(),
                    });
                    amqp.reporter.report(topic, &order_id, state);
                    if !ack {
                        held.push(delivery);
                    }
                }
                Ok::<_, lapin::Error>(())
            };
            let result = consumer.await;
            let _ = conn.close(200, "consumer ended").await;
            result
        }
    }
}

/// A text property of a delivery.
pub fn property(value: &Option<ShortString>) -> Option<String> {
    value.as_ref().map(|v| v.as_str().to_owned())
}
