//! `Controllers` against fake controllers served in this process: an active one, standbys that
//! name it (or no one), a URL where nothing listens, and one that drops the connection in the
//! middle of every call (fault injection), each counting the calls it was sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dasmesh_api::headers::{ACTIVE_HEADER, ROLE_HEADER, STANDBY};
use dasmesh_api::v1::pool_server::{Pool, PoolServer};
use dasmesh_api::v1::volumes_server::{Volumes, VolumesServer};
use dasmesh_api::{controllers, v1, ControllerOptions, Controllers};
use tonic::{Request, Response, Status};

/// How a fake answers every call.
#[derive(Clone)]
enum Role {
    Active,
    /// A standby naming the active controller, or no one (an election is on).
    Standby(Option<String>),
    /// Shuts its connections down and never answers.
    Dropper,
}

#[derive(Clone)]
struct Fake {
    /// Told apart in answers by this id.
    id: u64,
    role: Role,
    calls: Arc<AtomicUsize>,
    /// A second handle on every accepted socket, to shut it down from a call.
    sockets: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Fake {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn answer<T>(&self, ok: T) -> Result<Response<T>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match &self.role {
            Role::Active => Ok(Response::new(ok)),
            Role::Standby(active) => {
                let mut s = Status::unavailable(match active {
                    Some(a) => format!("standby controller: the active controller is at {a}"),
                    None => "standby controller: no active controller elected yet".into(),
                });
                s.metadata_mut()
                    .insert(ROLE_HEADER, STANDBY.parse().unwrap());
                if let Some(a) = active {
                    s.metadata_mut().insert(ACTIVE_HEADER, a.parse().unwrap());
                }
                Err(s)
            }
            Role::Dropper => {
                for s in self.sockets.lock().unwrap().drain(..) {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
                std::future::pending().await
            }
        }
    }

    fn node(&self) -> v1::Node {
        v1::Node {
            node_id: self.id,
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl Pool for Fake {
    async fn list_nodes(
        &self,
        _: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let nodes = vec![self.node()];
        self.answer(v1::ListNodesResponse { nodes }).await
    }
    async fn list_devices(
        &self,
        _: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        self.answer(Default::default()).await
    }
    async fn get_node(&self, _: Request<v1::GetNodeRequest>) -> Result<Response<v1::Node>, Status> {
        self.answer(self.node()).await
    }
}

#[tonic::async_trait]
impl Volumes for Fake {
    async fn create(
        &self,
        r: Request<v1::CreateVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let v = v1::Volume {
            volume_id: self.id,
            name: r.into_inner().name,
            ..Default::default()
        };
        self.answer(v).await
    }
    async fn get(&self, _: Request<v1::GetVolumeRequest>) -> Result<Response<v1::Volume>, Status> {
        self.answer(Default::default()).await
    }
    async fn list(
        &self,
        _: Request<v1::ListVolumesRequest>,
    ) -> Result<Response<v1::ListVolumesResponse>, Status> {
        self.answer(Default::default()).await
    }
    async fn resize(
        &self,
        _: Request<v1::ResizeVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        self.answer(Default::default()).await
    }
    async fn delete(
        &self,
        _: Request<v1::DeleteVolumeRequest>,
    ) -> Result<Response<v1::DeleteVolumeResponse>, Status> {
        self.answer(Default::default()).await
    }
    async fn replace_copy(
        &self,
        _: Request<v1::ReplaceCopyRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        self.answer(Default::default()).await
    }
}

/// Serves a fake with `role` on a free loopback port: its URL and the fake.
async fn serve(id: u64, role: Role) -> (String, Fake) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let fake = Fake {
        id,
        role,
        calls: Arc::default(),
        sockets: Arc::default(),
    };
    let sockets = Arc::clone(&fake.sockets);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await?;
            let s = s.into_std()?;
            sockets.lock().unwrap().push(s.try_clone()?);
            let s = tokio::net::TcpStream::from_std(s)?;
            if tx.send(Ok::<_, std::io::Error>(s)).await.is_err() {
                return Ok::<_, std::io::Error>(());
            }
        }
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PoolServer::new(fake.clone()))
            .add_service(VolumesServer::new(fake.clone()))
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)),
    );
    (url, fake)
}

/// A loopback URL where nothing listens.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn opts(failover_wait: Duration) -> ControllerOptions {
    ControllerOptions {
        failover_wait,
        // Only a guard: no call here should take it.
        timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    }
}

async fn list_nodes(c: &Controllers) -> Result<u64, Status> {
    let r = v1::pool_client::PoolClient::new(c.clone())
        .list_nodes(v1::ListNodesRequest {})
        .await?;
    Ok(r.into_inner().nodes[0].node_id)
}

async fn create(c: &Controllers, name: &str) -> Result<v1::Volume, Status> {
    let r = v1::volumes_client::VolumesClient::new(c.clone())
        .create(v1::CreateVolumeRequest {
            name: name.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner())
}

#[tokio::test]
async fn the_active_is_found_through_a_standby_and_past_a_dead_url() {
    let (active, a) = serve(1, Role::Active).await;
    let (standby, s) = serve(2, Role::Standby(Some(active.clone()))).await;
    let dead = dead_url();
    let c = Controllers::parse_with(
        &format!("{standby},{dead},{active}"),
        opts(Duration::from_secs(5)),
    )
    .unwrap();
    assert_eq!(c.active(), standby);

    // The standby names the active, which is tried next (not the dead URL).
    assert_eq!(list_nodes(&c).await.unwrap(), 1);
    assert_eq!((s.calls(), a.calls()), (1, 1));
    assert_eq!(c.active(), active);
    // The next call goes straight to it; so does one that must not be repeated.
    assert_eq!(list_nodes(&c).await.unwrap(), 1);
    assert_eq!(create(&c, "v").await.unwrap().volume_id, 1);
    assert_eq!((s.calls(), a.calls()), (1, 3));

    // A dead URL first: the call, even one that must not be repeated, never left, so it goes on
    // to the next.
    let c =
        Controllers::parse_with(&format!("{dead},{active}"), opts(Duration::from_secs(5))).unwrap();
    assert_eq!(create(&c, "w").await.unwrap().name, "w");
    assert_eq!(c.active(), active);
    assert_eq!(a.calls(), 4);
}

#[tokio::test]
async fn a_standby_may_name_an_active_that_is_not_in_the_list() {
    let (active, a) = serve(1, Role::Active).await;
    let other_spelling = active.replace("127.0.0.1", "localhost");
    let (standby, _s) = serve(2, Role::Standby(Some(other_spelling.clone()))).await;
    let c = Controllers::parse_with(&standby, opts(Duration::from_secs(5))).unwrap();
    assert_eq!(list_nodes(&c).await.unwrap(), 1);
    assert_eq!(a.calls(), 1);
    assert_eq!(c.active(), other_spelling);
    assert_eq!(c.urls(), [standby, other_spelling]);
}

#[tokio::test]
async fn with_only_standbys_the_call_ends_with_their_refusal_after_failover_wait() {
    let (s1, f1) = serve(1, Role::Standby(None)).await;
    let (s2, f2) = serve(2, Role::Standby(None)).await;
    let wait = Duration::from_millis(400);
    let c = Controllers::parse_with(&format!("{s1},{s2}"), opts(wait)).unwrap();
    let t = Instant::now();
    let e = list_nodes(&c).await.unwrap_err();
    assert!(t.elapsed() >= wait, "gave up after {:?}", t.elapsed());
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(
        e.message(),
        "standby controller: no active controller elected yet"
    );
    assert!(!controllers::is_unreachable(&e));
    // Round after round, each asked more than once.
    assert!(
        f1.calls() >= 2 && f2.calls() >= 2,
        "{} {}",
        f1.calls(),
        f2.calls()
    );
}

#[tokio::test]
async fn with_nothing_listening_the_call_names_every_url_tried() {
    let (d1, d2) = (dead_url(), dead_url());
    let c =
        Controllers::parse_with(&format!("{d1},{d2}"), opts(Duration::from_millis(200))).unwrap();
    let e = create(&c, "v").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(controllers::is_unreachable(&e), "{e:?}");
    let m = e.message();
    assert!(
        m.starts_with(&format!(
            "cannot reach the controller at {d1} or {d2} ({d1}: "
        )),
        "{m}"
    );
    assert!(m.contains(&format!("; {d2}: ")), "{m}");
    assert_eq!(m.lines().count(), 1, "{m}");
}

#[tokio::test]
async fn a_call_cut_off_mid_way_is_repeated_only_when_that_is_safe() {
    let (dropper, d) = serve(1, Role::Dropper).await;
    let (active, a) = serve(2, Role::Active).await;
    let c = Controllers::parse_with(&format!("{dropper},{active}"), opts(Duration::from_secs(5)))
        .unwrap();

    // A create may have been applied: the caller decides.
    let e = create(&c, "v").await.unwrap_err();
    assert!(controllers::is_lost(&e), "{e:?}");
    assert!(
        e.message().starts_with(&format!(
            "lost the connection to the controller at {dropper} during \
             /dasmesh.v1.Volumes/Create, which may have been applied: "
        )),
        "{e:?}"
    );
    assert_eq!((d.calls(), a.calls()), (1, 0));

    // A read is simply asked again, of the next controller.
    assert_eq!(list_nodes(&c).await.unwrap(), 2);
    assert_eq!((d.calls(), a.calls()), (2, 1));
    assert_eq!(c.active(), active);
}
