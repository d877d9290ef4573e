//! The methods that matter for following messages, decoded from a method frame's payload;
//! every other method of AMQP 0-9-1 is known by its ids and passed over.

use bytes::Bytes;

use super::wire::Reader;

const CONNECTION: u16 = 10;
const CHANNEL: u16 = 20;
const EXCHANGE: u16 = 40;
const QUEUE: u16 = 50;
const BASIC: u16 = 60;
const CONFIRM: u16 = 85;
const TX: u16 = 90;

/// Whether (class, method) is a method of AMQP 0-9-1 (with RabbitMQ's extensions).
pub fn is_known(class: u16, method: u16) -> bool {
    let methods: &[u16] = match class {
        CONNECTION => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        CHANNEL => &[10, 11, 20, 21, 40, 41],
        EXCHANGE => &[10, 11, 20, 21, 30, 31, 40, 51],
        QUEUE => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        BASIC => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        CONFIRM => &[10, 11],
        TX => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method)
}

/// A decoded method. Names are views into the frame (no copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `connection.tune-ok`: the frame size the client settled on.
    TuneOk {
        frame_max: u32,
    },
    ConnectionClose,
    ChannelOpen,
    /// `channel.close` (either side may send it); `reply_code` 200 is a normal close.
    ChannelClose {
        reply_code: u16,
    },
    ChannelCloseOk,
    ConfirmSelect,
    Consume {
        queue: Bytes,
        tag: Bytes,
        no_ack: bool,
        no_wait: bool,
    },
    ConsumeOk {
        tag: Bytes,
    },
    Cancel {
        tag: Bytes,
    },
    Publish {
        exchange: Bytes,
        routing_key: Bytes,
    },
    Return {
        reply_code: u16,
        exchange: Bytes,
        routing_key: Bytes,
    },
    Deliver {
        tag: Bytes,
        delivery_tag: u64,
        redelivered: bool,
        exchange: Bytes,
        routing_key: Bytes,
    },
    Get {
        queue: Bytes,
        no_ack: bool,
    },
    GetOk {
        delivery_tag: u64,
        redelivered: bool,
        exchange: Bytes,
        routing_key: Bytes,
    },
    GetEmpty,
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
    Nack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        delivery_tag: u64,
        requeue: bool,
    },
    /// Known, and of no interest here.
    Other,
}

impl Method {
    /// Decodes a method payload; `None` when it is cut short or not a known method.
    pub fn parse(payload: &Bytes) -> Option<Method> {
        let mut r = Reader::new(payload, 0);
        let (class, method) = (r.u16()?, r.u16()?);
        if !is_known(class, method) {
            return None;
        }
        Some(match (class, method) {
            (CONNECTION, 31) => {
                r.u16()?;
                Method::TuneOk {
                    frame_max: r.u32()?,
                }
            }
            (CONNECTION, 50) => Method::ConnectionClose,
            (CHANNEL, 10) => Method::ChannelOpen,
            (CHANNEL, 40) => Method::ChannelClose {
                reply_code: r.u16()?,
            },
            (CHANNEL, 41) => Method::ChannelCloseOk,
            (CONFIRM, 10) => Method::ConfirmSelect,
            (BASIC, 20) => {
                r.u16()?;
                let (queue, tag) = (r.short_str()?, r.short_str()?);
                let bits = r.u8()?;
                Method::Consume {
                    queue,
                    tag,
                    no_ack: bits & 2 != 0,
                    no_wait: bits & 8 != 0,
                }
            }
            (BASIC, 21) => Method::ConsumeOk {
                tag: r.short_str()?,
            },
            (BASIC, 30) => Method::Cancel {
                tag: r.short_str()?,
            },
            (BASIC, 40) => {
                r.u16()?;
                Method::Publish {
                    exchange: r.short_str()?,
                    routing_key: r.short_str()?,
                }
            }
            (BASIC, 50) => {
                let reply_code = r.u16()?;
                r.short_str()?;
                Method::Return {
                    reply_code,
                    exchange: r.short_str()?,
                    routing_key: r.short_str()?,
                }
            }
            (BASIC, 60) => Method::Deliver {
                tag: r.short_str()?,
                delivery_tag: r.u64()?,
                redelivered: r.u8()? & 1 != 0,
                exchange: r.short_str()?,
                routing_key: r.short_str()?,
            },
            (BASIC, 70) => {
                r.u16()?;
                Method::Get {
                    queue: r.short_str()?,
                    no_ack: r.u8()? & 1 != 0,
                }
            }
            (BASIC, 71) => Method::GetOk {
                delivery_tag: r.u64()?,
                redelivered: r.u8()? & 1 != 0,
                exchange: r.short_str()?,
                routing_key: r.short_str()?,
            },
            (BASIC, 72) => Method::GetEmpty,
            (BASIC, 80) => Method::Ack {
                delivery_tag: r.u64()?,
                multiple: r.u8()? & 1 != 0,
            },
            (BASIC, 90) => Method::Reject {
                delivery_tag: r.u64()?,
                requeue: r.u8()? & 1 != 0,
            },
            (BASIC, 120) => {
                let delivery_tag = r.u64()?;
                let bits = r.u8()?;
                Method::Nack {
                    delivery_tag,
                    multiple: bits & 1 != 0,
                    requeue: bits & 2 != 0,
                }
            }
            _ => Method::Other,
        })
    }
}

/// The content header of a message (`basic` class): the body's size and the properties,
/// kept encoded and read when a rule asks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// The property flags and list as sent (the frame payload after the body size).
    encoded: Bytes,
}

/// Property names rules and spans may read, in the order of the flag bits (bit 15 first).
const PROPERTY_NAMES: [&str; 14] = [
    "content-type",
    "content-encoding",
    "headers",
    "delivery-mode",
    "priority",
    "correlation-id",
    "reply-to",
    "expiration",
    "message-id",
    "timestamp",
    "type",
    "user-id",
    "app-id",
    "cluster-id",
];

/// A short-string property a rule may take an order id from.
pub fn is_text_property(name: &str) -> bool {
    matches!(
        name,
        "content-type"
            | "content-encoding"
            | "correlation-id"
            | "reply-to"
            | "expiration"
            | "message-id"
            | "type"
            | "user-id"
            | "app-id"
    )
}

/// A decoded content header: the declared body size and the properties.
pub fn parse_content_header(payload: &Bytes) -> Option<(u64, Properties)> {
    let mut r = Reader::new(payload, 0);
    let (_class, _weight) = (r.u16()?, r.u16()?);
    let body_size = r.u64()?;
    Some((
        body_size,
        Properties {
            encoded: payload.slice(12..),
        },
    ))
}

impl Properties {
    /// Properties as a publisher would encode them: text properties by name (others are
    /// ignored) and a `headers` table of text values. For fixtures and benchmarks.
    pub fn encode(text: &[(&str, &str)], headers: &[(&str, &str)]) -> Properties {
        let mut flags = 0u16;
        let mut list = Vec::new();
        for (bit, name) in PROPERTY_NAMES.iter().enumerate() {
            if *name == "headers" && !headers.is_empty() {
                flags |= 0x8000 >> bit;
                let mut table = Vec::new();
                for (key, value) in headers {
                    table.push(key.len() as u8);
                    table.extend_from_slice(key.as_bytes());
                    table.push(b'S');
                    table.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    table.extend_from_slice(value.as_bytes());
                }
                list.extend_from_slice(&(table.len() as u32).to_be_bytes());
                list.extend(table);
            } else if let Some((_, value)) = text.iter().find(|(n, _)| n == name)
                && is_text_property(name)
            {
                flags |= 0x8000 >> bit;
                list.push(value.len() as u8);
                list.extend_from_slice(value.as_bytes());
            }
        }
        let mut encoded = flags.to_be_bytes().to_vec();
        encoded.extend(list);
        Properties {
            encoded: Bytes::from(encoded),
        }
    }

    /// Bytes the properties hold, as sent.
    pub fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    /// A text property by its 0-9-1 name (`message-id`, `correlation-id`, …).
    pub fn text(&self, name: &str) -> Option<Bytes> {
        match self.find(name)? {
            Value::Text(b) => Some(b),
            Value::Table(_) => None,
        }
    }

    /// The `headers` table, encoded.
    pub fn headers(&self) -> Option<Bytes> {
        match self.find("headers")? {
            Value::Table(t) => Some(t),
            Value::Text(_) => None,
        }
    }

    fn find(&self, name: &str) -> Option<Value> {
        let wanted = PROPERTY_NAMES.iter().position(|n| *n == name)?;
        let mut r = Reader::new(&self.encoded, 0);
        let flags = r.u16()?;
        // Continuation words carry no properties of 0-9-1's basic class: step over them.
        let mut word = flags;
        while word & 1 != 0 {
            word = r.u16()?;
        }
        for (bit, property) in PROPERTY_NAMES.iter().enumerate() {
            if flags & (0x8000 >> bit) == 0 {
                continue;
            }
            let value = match *property {
                "headers" => Value::Table(r.long_bytes()?),
                "delivery-mode" | "priority" => {
                    r.u8()?;
                    Value::Text(Bytes::new())
                }
                "timestamp" => {
                    r.u64()?;
                    Value::Text(Bytes::new())
                }
                _ => Value::Text(r.short_str()?),
            };
            if bit == wanted {
                return Some(value);
            }
        }
        None
    }
}

enum Value {
    Text(Bytes),
    Table(Bytes),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_short_payloads_are_refused() {
        assert_eq!(Method::parse(&Bytes::from_static(&[0, 60, 0, 99])), None);
        assert_eq!(Method::parse(&Bytes::from_static(&[0, 60, 0, 40, 0])), None);
        assert_eq!(
            Method::parse(&Bytes::from_static(&[
                0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 7, 1
            ])),
            Some(Method::Ack {
                delivery_tag: 7,
                multiple: true
            })
        );
    }

    #[test]
    fn properties_are_read_in_flag_order() {
        // content-type "application/json", headers {}, message-id "m-1".
        let mut p = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        p.extend_from_slice(&(0x8000u16 | 0x2000 | 0x0080).to_be_bytes());
        p.push(16);
        p.extend_from_slice(b"application/json");
        p.extend_from_slice(&0u32.to_be_bytes());
        p.push(3);
        p.extend_from_slice(b"m-1");
        let (size, props) = parse_content_header(&Bytes::from(p)).unwrap();
        assert_eq!(size, 5);
        assert_eq!(props.text("message-id").as_deref(), Some(&b"m-1"[..]));
        assert_eq!(
            props.text("content-type").as_deref(),
            Some(&b"application/json"[..])
        );
        assert_eq!(props.text("correlation-id"), None);
        assert_eq!(props.headers().as_deref(), Some(&b""[..]));
        assert_eq!(props.text("nonsense"), None);
    }
}
