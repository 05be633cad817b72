//! The capacity and heavy scenarios' tables (markdown), from the blasts of
//! [`capacity`](super::capacity).

use std::fmt::Write as _;

use super::{
    capacity::{Blast, LARGE, SATURATED, SMALL},
    table,
};

impl Blast {
    /// The carrier, and the pace when trafgen was paced.
    pub fn label(&self) -> String {
        match self.paced_pps {
            Some(p) => format!("{} (paced at {p}/s)", self.carrier.label()),
            None => self.carrier.label().to_owned(),
        }
    }
}

/// The "Capacity" and "One heavy allocation" tables.
pub fn markdown(capacity: &[Blast], heavy: &[Blast]) -> String {
    let mut s = String::new();
    if !capacity.is_empty() {
        let _ = writeln!(s, "## Capacity (trafgen at full speed)\n");
        let _ = writeln!(
            s,
            "`relay load` holds the allocations; trafgen blasts {SMALL}-byte ChannelData \
             payloads through them from one core; an XDP sink on the far host counts and \
             drops. *Offered* is what trafgen sent, *delivered* what the sink counted, both \
             per second of the blast; *box* is whole-box CPU (trafgen holds one core); \
             *NAPI* is how much of the blast the relay host's ingress NAPI thread ran, the \
             core the carrier works on. A veth holds trafgen to the receiver's pace (its \
             frames stay charged to trafgen's socket until the receiving NAPI frees them), \
             so delivered = offered at any load: a carrier is at its capacity when its NAPI \
             core is saturated (≥ {:.0}%), not when it loses frames. The ceilings carry the \
             same frames with no relay.\n",
            SATURATED * 100.0
        );
        table(&mut s, capacity, false);
    }
    if !heavy.is_empty() {
        let _ = writeln!(s, "## One heavy allocation ({LARGE}-byte payloads)\n");
        table(&mut s, heavy, true);
    }
    s
}

fn table(s: &mut String, blasts: &[Blast], mbps: bool) {
    let _ = writeln!(
        s,
        "| carrier | allocations | way | offered/s | delivered/s | delivered % | {}box CPU | NAPI |",
        if mbps { "Mbit/s | " } else { "" }
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|{}",
        if mbps { "---|" } else { "" }
    );
    for b in blasts {
        let Some(f) = &b.figures else {
            let why = table::why(&b.error);
            let _ = writeln!(
                s,
                "| {} | {} | {} | failed: {why} |||||{}",
                b.label(),
                b.allocations,
                b.way.label(),
                if mbps { "|" } else { "" }
            );
            continue;
        };
        let mbit = if mbps {
            format!("{:.0} | ", f.delivered_mbps)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {mbit}{:.0}% | {:.0}% |",
            b.label(),
            f.ready,
            b.way.label(),
            f.offered_pps,
            f.delivered_pps,
            f.ratio * 100.0,
            f.box_busy * 100.0,
            f.napi_busy * 100.0,
        );
    }
    let _ = writeln!(s);
}
