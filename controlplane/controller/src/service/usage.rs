//! The Usage service: metering and charges per lease (a standby answers too, from the state in
//! etcd).

use super::*;

#[tonic::async_trait]
impl v1::usage_server::Usage for Svc {
    async fn report(
        &self,
        r: Request<v1::UsageRequest>,
    ) -> Result<Response<v1::UsageReport>, Status> {
        let ctl = self.view().await?;
        let q = r.into_inner();
        let now = now_ms();
        let end = if q.end_ms == 0 { now } else { q.end_ms };
        let records: Vec<v1::UsageRecord> = ctl.read(|s| {
            s.usage
                .values()
                .filter(|u| q.host_id.is_empty() || u.host == q.host_id)
                .filter(|u| q.volume.is_empty() || u.volume == q.volume)
                .filter_map(|u| {
                    let from = u.started_ms.max(q.start_ms);
                    let to = u.ended_ms.unwrap_or(now).min(end);
                    (to > from || (to == from && u.ended_ms.is_none())).then(|| {
                        let gib_hours =
                            u.size as f64 / (1u64 << 30) as f64 * (to - from) as f64 / 3_600_000.0;
                        let (ops_s, bytes_s) = u.recent(now);
                        let req = s.volumes.get(&u.volume).map(|v| v.req).unwrap_or_default();
                        v1::UsageRecord {
                            host_id: u.host.clone(),
                            volume: u.volume.clone(),
                            lease_id: u.lease_id,
                            started_ms: from,
                            ended_ms: to,
                            read_bytes: u.read_bytes,
                            write_bytes: u.write_bytes,
                            read_ops: u.read_ops,
                            write_ops: u.write_ops,
                            gib_hours,
                            charge: gib_hours * u.price_per_gib_hour,
                            recent_iops: ops_s,
                            recent_mib_s: bytes_s / 1_048_576.0,
                            average_iops: u.read_ops.saturating_add(u.write_ops) as f64 * 1000.0
                                / u.ended_ms
                                    .unwrap_or(now)
                                    .saturating_sub(u.started_ms)
                                    .max(1) as f64,
                            promised_iops: req.min_iops,
                            promised_mib_s: req.min_mib_s,
                            max_iops: req.max_iops,
                            max_mib_s: req.max_mib_s,
                            active: u.ended_ms.is_none(),
                        }
                    })
                })
                .collect()
        });
        let total_charge = records.iter().map(|r| r.charge).sum();
        Ok(Response::new(v1::UsageReport {
            records,
            total_charge,
        }))
    }
}
