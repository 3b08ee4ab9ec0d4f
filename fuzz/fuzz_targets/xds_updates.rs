//! xDS responses applied one after another to the proxy's state, then compiled: a rejected
//! update leaves the last good resources.
#![no_main]

use arbitrary::Arbitrary;
use weft_proxy::properties::{XdsBody, XdsResource, XdsStep, xds_updates};

#[derive(Debug, Arbitrary)]
enum Body {
    Raw(Vec<u8>),
    Built {
        name: String,
        address: String,
        port: u32,
        weight: u32,
        other: String,
    },
}

#[derive(Debug, Arbitrary)]
struct Resource {
    name: Option<String>,
    type_sel: u8,
    body: Body,
}

#[derive(Debug, Arbitrary)]
struct Step {
    kind: u8,
    full: bool,
    resources: Vec<Resource>,
    removed: Vec<String>,
}

libfuzzer_sys::fuzz_target!(|steps: Vec<Step>| {
    let steps: Vec<XdsStep> = steps
        .into_iter()
        .map(|s| XdsStep {
            kind: s.kind,
            full: s.full,
            resources: s
                .resources
                .into_iter()
                .map(|r| XdsResource {
                    name: r.name,
                    type_sel: r.type_sel,
                    body: match r.body {
                        Body::Raw(b) => XdsBody::Raw(b),
                        Body::Built {
                            name,
                            address,
                            port,
                            weight,
                            other,
                        } => XdsBody::Built {
                            name,
                            address,
                            port,
                            weight,
                            other,
                        },
                    },
                })
                .collect(),
            removed: s.removed,
        })
        .collect();
    xds_updates(&steps);
});
