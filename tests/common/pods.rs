//! Three pods of one deployment on loopback (127.0.0.1, 127.0.1.1, 127.0.2.1, one
//! port), with 6 partitions.

use std::net::SocketAddr;
use std::path::Path;

use sagalog_testkit::client::Client;
use sagalog_testkit::process::Server;

pub const NODES: u32 = 3;
pub const PARTITIONS: u32 = 6;
pub const SECRET: &str = "test-cluster-secret";

/// A port free on each pod's loopback address.
fn free_port() -> u16 {
    let hosts: Vec<String> = (0..NODES).map(|i| format!("127.0.{i}.1")).collect();
    sagalog_testkit::free_port_on(&hosts)
}

pub struct Pods {
    root: tempfile::TempDir,
    port: u16,
    /// `extra` options of every pod.
    extra: Vec<String>,
    pub servers: Vec<Option<Server>>,
}

impl Pods {
    /// Starts the pods, each with `extra` options too.
    pub fn start(extra: &[&str]) -> Pods {
        let mut pods = Pods {
            root: tempfile::tempdir().unwrap(),
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            servers: Vec::new(),
        };
        for i in 0..NODES {
            let server = pods.start_pod(i);
            pods.servers.push(Some(server));
        }
        pods
    }

    pub fn start_pod(&self, i: u32) -> Server {
        let dir = self.root.path().join(format!("pod-{i}"));
        let template = format!("http://127.0.{{i}}.1:{}", self.port);
        let (node, listen) = (i.to_string(), format!("127.0.{i}.1:{}", self.port));
        let partitions = PARTITIONS.to_string();
        let nodes = NODES.to_string();
        Server::start_on(
            Path::new(env!("CARGO_BIN_EXE_sagalog")),
            &dir,
            &listen,
            &[
                "--partitions",
                &partitions,
                "--nodes",
                &nodes,
                "--node-id",
                &node,
                "--peer-url-template",
                &template,
                "--cluster-secret",
                SECRET,
            ]
            .into_iter()
            .chain(self.extra.iter().map(String::as_str))
            .collect::<Vec<_>>(),
        )
        .unwrap_or_else(|e| panic!("pod {i}: {e}"))
    }

    pub fn addr(&self, i: u32) -> SocketAddr {
        format!("127.0.{i}.1:{}", self.port).parse().unwrap()
    }

    pub async fn client(&self, i: u32) -> Client {
        Client::connect(self.addr(i)).await.unwrap()
    }
}

/// The pod that holds `saga_id`.
pub fn node_of(saga_id: &str) -> u32 {
    sagalog_engine::Placement::new(PARTITIONS, NODES, 0)
        .expect("the pods' placement")
        .node_of_saga(saga_id)
}
