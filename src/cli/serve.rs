//! `foodclip serve`: checks the flags, binds the address, and hands the server a way to load
//! the model and the label embeddings once.

use super::context::Context;
use super::flags::ServeArgs;
use super::Outcome;
use crate::serve::{Cors, Engine, Options};
use anyhow::{bail, Context as _, Result};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::Duration;

pub(super) fn run(cx: &Context, args: &ServeArgs) -> Result<Outcome> {
    let (labels, adapter, templates) = cx.classes(&args.classes)?;
    if args.regions.regions.is_some() && !args.regions.is_auto() {
        bail!(
            "--regions lists photos by path, and uploads have none; give --layout, --grid or \
             --regions auto, or send regions with each request"
        );
    }
    let regions = args.regions.load_auto()?;
    let auto = regions
        .as_ref()
        .is_some_and(crate::regions::Regions::is_auto);
    let token = match &args.token {
        Some(t) if t.trim().is_empty() => {
            bail!("--token (or FOODCLIP_TOKEN) is empty; give a secret, or leave it out")
        }
        t => t.as_ref().map(|t| t.trim().to_string()),
    };
    let max_body = usize::try_from(args.max_body).context("--max-body is too large")?;
    let cors = Cors::parse(&args.cors_origins)?;
    // The history is read before the port is taken: a bad row is a configuration error.
    let forecast = if args.history.is_empty() {
        None
    } else {
        let service = crate::forecast::Service::load(&args.history, &labels)?;
        cx.ui.note(&format!(
            "forecasting from the history {} to {}",
            service.span.0, service.span.1
        ));
        Some(std::sync::Arc::new(service))
    };
    // A model that cannot be named fails before the port is taken; one that cannot be loaded
    // fails while the server says "loading".
    cx.source()?;
    let addr = address(&args.host, args.port)?;
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("cannot listen")?;
    if !addr.ip().is_loopback() {
        let open = if token.is_some() {
            "requests need the token"
        } else {
            "anyone who can reach it may use it; consider --token"
        };
        cx.ui.warn(&format!(
            "listening on {}: the API is open to the network ({open})",
            addr.ip()
        ));
    }
    // Always shown, even with --quiet: where to connect.
    eprintln!("foodclip: listening on http://{local} (loading the model)");
    let options = Options {
        token,
        max_body,
        max_queue: args.max_queue as usize,
        batch_size: args.batch.batch_size as usize,
        batch_wait: Duration::from_millis(args.batch_wait),
        max_pixels: args.batch.max_pixels,
        fidelity: cx.fidelity,
        regions,
        cors,
        forecast,
    };
    let adapter_name = args
        .classes
        .adapter
        .as_ref()
        .and_then(|a| a.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let load = || -> Result<Engine> {
        let ckpt = std::sync::Arc::new(cx.model(false)?);
        cx.warn_language(&ckpt, &labels);
        let classifier = cx.scorer(&ckpt, &labels, &templates, adapter.as_ref())?;
        let finder = if auto {
            let dishes = super::auto::Dishes::new(&labels, &classifier, &templates, &args.regions);
            let finder: std::sync::Arc<dyn crate::regions::auto::Finder> =
                std::sync::Arc::new(super::auto::finder(cx, &ckpt, &dishes)?);
            Some(finder)
        } else {
            None
        };
        Ok(Engine {
            ckpt,
            classifier,
            labels: labels.clone(),
            adapter: adapter_name,
            finder,
        })
    };
    let quiet = cx.ui.quiet;
    crate::serve::run(listener, options, load, move |line| {
        if !quiet {
            eprintln!("foodclip: {line}");
        }
    })?;
    Ok(Outcome::Success)
}

/// The socket address of `--host` and `--port` (a host name is looked up).
fn address(host: &str, port: u16) -> Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("--host {host}: not an address this machine can listen on"))?
        .next()
        .with_context(|| format!("--host {host}: no address found"))
}
