//! The `authorization: Bearer <token>` header every control-plane call carries.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Attaches a bearer token to each request.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl BearerToken {
    /// Fails when the token holds characters a header cannot carry.
    pub fn new(token: &str) -> Result<BearerToken, tonic::metadata::errors::InvalidMetadataValue> {
        format!("Bearer {token}").parse().map(BearerToken)
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}
