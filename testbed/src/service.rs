//! The four testbed processes: names, executables, ports and URLs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Ports used from a base port: seven (see [`Service::port`], [`Service::amqp_port`]).
pub const PORTS_USED: u16 = 7;

/// Default base port: shop on it, MES +1, CRM +2, queue +3, the queue's broker +4..+6.
pub const DEFAULT_BASE_PORT: u16 = 18080;

/// One testbed process. Its serde name is its executable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Service {
    #[serde(rename = "shop-api")]
    Shop,
    #[serde(rename = "mes-api")]
    Mes,
    #[serde(rename = "crm-api")]
    Crm,
    #[serde(rename = "order-queue")]
    Queue,
}

impl Service {
    pub const ALL: [Service; 4] = [Service::Shop, Service::Mes, Service::Crm, Service::Queue];

    /// The executable (and `service.name`) of the process.
    pub const fn as_str(self) -> &'static str {
        match self {
            Service::Shop => "shop-api",
            Service::Mes => "mes-api",
            Service::Crm => "crm-api",
            Service::Queue => "order-queue",
        }
    }

    /// The process's port for a base port (`--base-port`).
    pub const fn port(self, base: u16) -> u16 {
        base + match self {
            Service::Shop => 0,
            Service::Mes => 1,
            Service::Crm => 2,
            Service::Queue => 3,
        }
    }

    /// The broker's AMQP port for a base port (its Erlang distribution and port mapper take
    /// the next two).
    pub const fn amqp_port(base: u16) -> u16 {
        base + 4
    }
}

/// Plain HTTP (the default) or HTTPS, for every service of one testbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

impl Scheme {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where the services of one testbed answer: their ports and how they speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub base_port: u16,
    pub scheme: Scheme,
}

impl Endpoints {
    pub const fn plain(base_port: u16) -> Self {
        Endpoints {
            base_port,
            scheme: Scheme::Http,
        }
    }

    /// `http(s)://127.0.0.1:<port>`, the loopback address every testbed client uses (the
    /// services' certificate names it).
    pub fn base_url(&self, service: Service) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme.as_str(),
            service.port(self.base_port)
        )
    }

    /// The URL of `path` on `service`.
    pub fn url(&self, service: Service, path: &str) -> String {
        format!("{}{path}", self.base_url(service))
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
