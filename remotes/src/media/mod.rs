//! The stores of attachments' bytes outside git, behind the
//! [`MediaStore`](skygit_ports::media::MediaStore) port: Git LFS
//! ([`lfs::LfsHttp`], the batch API; [`lfs::LfsLocal`], git-lfs's
//! standalone layout in a local repository) and S3-compatible storage
//! ([`s3::S3Store`]).

pub mod lfs;
pub mod s3;
