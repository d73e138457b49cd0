//! `claimsledger.v1.Audit`: signed checkpoints and Merkle proofs, converted from `app::audit`.
use tonic::{Request, Response, Status};

use super::convert::{envelope_pb, ts};
use super::{on_blocking_thread, pb};
use crate::app::{App, Inclusion, Signed};

pub struct AuditService {
    app: App,
}

impl AuditService {
    pub fn new(app: App) -> Self {
        AuditService { app }
    }
}

fn checkpoint_pb(s: &Signed) -> pb::SignedCheckpoint {
    pb::SignedCheckpoint {
        note: s.note.clone(),
        origin: s.checkpoint.origin.clone(),
        tree_size: s.checkpoint.size,
        root_hash: s.checkpoint.root.to_vec(),
        timestamp: Some(ts(&s.checkpoint.timestamp)),
    }
}

fn inclusion_pb(i: &Inclusion) -> pb::InclusionProof {
    pb::InclusionProof {
        position: i.position,
        tree_size: i.tree_size,
        hashes: i.hashes.iter().map(|h| h.to_vec()).collect(),
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn get_public_key(
        &self,
        _req: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        Ok(Response::new(pb::GetPublicKeyResponse {
            origin: self.app.origin().to_string(),
            verifier_key: self.app.verifier().public_key_string(),
        }))
    }

    async fn get_checkpoint(
        &self,
        req: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        let size = req.into_inner().tree_size;
        let s = on_blocking_thread(&self.app, move |app| app.signed_checkpoint(size)).await?;
        Ok(Response::new(pb::GetCheckpointResponse {
            checkpoint: Some(checkpoint_pb(&s)),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::GetInclusionProofResponse>, Status> {
        let r = req.into_inner();
        let i = on_blocking_thread(&self.app, move |app| app.inclusion(r.position, r.tree_size))
            .await?;
        Ok(Response::new(pb::GetInclusionProofResponse {
            proof: Some(inclusion_pb(&i)),
            leaf_hash: i.leaf_hash.to_vec(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::GetConsistencyProofResponse>, Status> {
        let r = req.into_inner();
        let (new_size, hashes) = on_blocking_thread(&self.app, move |app| {
            app.consistency(r.old_size, r.new_size)
        })
        .await?;
        Ok(Response::new(pb::GetConsistencyProofResponse {
            old_size: r.old_size,
            new_size,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_event_with_proof(
        &self,
        req: Request<pb::GetEventWithProofRequest>,
    ) -> Result<Response<pb::GetEventWithProofResponse>, Status> {
        let r = req.into_inner();
        let (event, inclusion, signed) = on_blocking_thread(&self.app, move |app| {
            app.event_with_proof(r.position, r.tree_size)
        })
        .await?;
        Ok(Response::new(pb::GetEventWithProofResponse {
            event: Some(envelope_pb(&event)?),
            proof: Some(inclusion_pb(&inclusion)),
            checkpoint: Some(checkpoint_pb(&signed)),
        }))
    }
}
