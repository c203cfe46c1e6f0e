//! The S3 driver's resumable writer: full parts go up as they fill, `close` records the multipart upload's
//! state and unfinished tail in the private sidecar objects, `commit` completes (or, for small content,
//! does a single `PutObject`), `cancel` aborts.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};

use super::{MpuState, PartState, S3Driver, backend};
use crate::storage::{FileWriter, StorageError};

pub(super) struct S3Writer {
    pub(super) driver: S3Driver,
    pub(super) path: String,
    pub(super) key: String,
    pub(super) state: MpuState,
    pub(super) buffer: BytesMut,
    pub(super) size: u64,
}

impl S3Writer {
    async fn upload_part(&mut self, data: Bytes) -> Result<(), StorageError> {
        let d = &self.driver;
        if self.state.upload_id.is_empty() {
            let out = d
                .client
                .create_multipart_upload()
                .bucket(&d.bucket)
                .key(&self.key)
                .send()
                .await
                .map_err(|e| backend(&self.path, e))?;
            self.state.upload_id = out.upload_id().unwrap_or_default().to_owned();
        }
        let number = self.state.parts.len() as i32 + 1;
        let size = data.len() as u64;
        let out = d
            .client
            .upload_part()
            .bucket(&d.bucket)
            .key(&self.key)
            .upload_id(&self.state.upload_id)
            .part_number(number)
            .content_length(size as i64)
            .body(S3Body::from(data))
            .send()
            .await
            .map_err(|e| backend(&self.path, e))?;
        self.state.parts.push(PartState {
            number,
            etag: out.e_tag().unwrap_or_default().to_owned(),
            size,
        });
        Ok(())
    }

    async fn flush_full_parts(&mut self) -> Result<(), StorageError> {
        while self.buffer.len() >= self.driver.part_size {
            let part = self.buffer.split_to(self.driver.part_size).freeze();
            self.upload_part(part).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl FileWriter for S3Writer {
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        self.size += data.len() as u64;
        self.buffer.extend_from_slice(&data);
        self.flush_full_parts().await
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn close(mut self: Box<Self>) -> Result<(), StorageError> {
        self.flush_full_parts().await?;
        let d = self.driver.clone();
        let tail_key = d.key(&S3Driver::sidecar(&self.path, "tail"));
        let tail = self.buffer.split().freeze();
        d.put_key(&tail_key, &self.path, tail).await?;
        if !self.state.upload_id.is_empty() {
            let state = serde_json::to_vec(&self.state).unwrap_or_default();
            d.put_key(
                &d.key(&S3Driver::sidecar(&self.path, "mpu")),
                &self.path,
                Bytes::from(state),
            )
            .await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StorageError> {
        let d = self.driver.clone();
        if self.state.upload_id.is_empty() {
            let data = self.buffer.split().freeze();
            d.put_key(&self.key, &self.path, data).await?;
        } else {
            self.flush_full_parts().await?;
            if !self.buffer.is_empty() {
                let last = self.buffer.split().freeze();
                self.upload_part(last).await?;
            }
            let parts: Vec<CompletedPart> = self
                .state
                .parts
                .iter()
                .map(|p| {
                    CompletedPart::builder()
                        .part_number(p.number)
                        .e_tag(&p.etag)
                        .build()
                })
                .collect();
            d.client
                .complete_multipart_upload()
                .bucket(&d.bucket)
                .key(&self.key)
                .upload_id(&self.state.upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| backend(&self.path, e))?;
        }
        let sidecars = vec![
            d.key(&S3Driver::sidecar(&self.path, "mpu")),
            d.key(&S3Driver::sidecar(&self.path, "tail")),
        ];
        d.delete_keys(&self.path, sidecars).await
    }

    async fn cancel(self: Box<Self>) -> Result<(), StorageError> {
        if !self.state.upload_id.is_empty() {
            self.driver
                .abort(&self.path, &self.key, &self.state.upload_id)
                .await?;
        }
        self.driver.discard_writer_state(&self.path).await
    }
}
