//! Argument checks every backend makes before it touches its peers (a bad argument is an
//! `InvalidArgument` error and leaves the group usable).

use std::ops::Range;

use crate::dtype::chunk_range;
use crate::{Buf, BufMut, CollectiveError, Result};

fn invalid(msg: String) -> CollectiveError {
    CollectiveError::InvalidArgument(msg)
}

pub(crate) fn root(root: usize, n: usize) -> Result<()> {
    if root >= n {
        return Err(invalid(format!("broadcast root {root} is out of range for world size {n}")));
    }
    Ok(())
}

fn same_dtype(input: &Buf<'_>, output: &BufMut<'_>) -> Result<()> {
    if input.dtype() != output.dtype() {
        return Err(invalid(format!("input is {} but output is {}", input.dtype().name(), output.dtype().name())));
    }
    Ok(())
}

pub(crate) fn all_gather(input: &Buf<'_>, output: &BufMut<'_>, n: usize) -> Result<()> {
    same_dtype(input, output)?;
    if output.len() != input.len() * n {
        return Err(invalid(format!(
            "all_gather output holds {} elements; it needs world size x input = {n} x {} = {}",
            output.len(),
            input.len(),
            input.len() * n
        )));
    }
    Ok(())
}

/// Returns the part of the input that rank `r` receives.
pub(crate) fn reduce_scatter(input: &Buf<'_>, output: &BufMut<'_>, n: usize, r: usize) -> Result<Range<usize>> {
    same_dtype(input, output)?;
    let own = chunk_range(input.len(), n, r);
    if output.len() != own.len() {
        return Err(invalid(format!(
            "reduce_scatter output of rank {r} holds {} elements; its part of the {} inputs is {} (see chunk_range)",
            output.len(),
            input.len(),
            own.len()
        )));
    }
    Ok(own)
}

/// `what` is `send to` or `recv from`.
pub(crate) fn peer(what: &str, peer: usize, rank: usize, n: usize) -> Result<()> {
    if peer >= n || peer == rank {
        return Err(invalid(format!("{what} rank {peer}: it must be another rank of 0..{n}")));
    }
    Ok(())
}
