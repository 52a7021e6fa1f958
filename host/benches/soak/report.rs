//! The soak's figures, printed as Markdown tables (what `docs/benchmarks.md` keeps): events/s
//! and redeliveries per phase and overall, publishing, and the CPU each process used.

use crate::drive::Driven;

/// Everything the tables show.
pub struct Report<'a> {
    /// Events published and handled.
    pub events: u64,
    /// Tenants they are spread over.
    pub tenants: u64,
    /// What the run measured.
    pub driven: &'a Driven,
    /// Seconds publishing took.
    pub publish_seconds: f64,
    /// Chunks published more than once.
    pub retries: u64,
    /// Events the stream already had when published.
    pub duplicates: u64,
    /// CPU µs each process used during the run: (name, µs).
    pub cpu: Vec<(String, f64)>,
}

impl Report<'_> {
    /// Prints the tables on stdout.
    pub fn print(&self) {
        let events = self.events;
        let wall = self.driven.wall.as_secs_f64();
        let (daemons, nodes) = (crate::DAEMONS, crate::NODES);
        println!(
            "\nsoak: {events} billing events ({} instances, {} tenants), {daemons} daemons, \
             {nodes}-node NATS cluster (R{nodes})\n",
            events / 2,
            self.tenants
        );
        println!("| phase | events | seconds | events/s | redeliveries |");
        println!("|---|---:|---:|---:|---:|");
        for phase in &self.driven.phases {
            println!(
                "| {} | {} | {:.1} | {:.0} | {} |",
                phase.name,
                phase.handled(),
                phase.seconds(),
                phase.rate(),
                phase.redeliveries()
            );
        }
        println!(
            "| **whole run** (publishing included) | {events} | {wall:.1} | **{:.0}** | {} |",
            events as f64 / wall,
            self.driven.end.redeliveries()
        );
        println!(
            "\npublishing: {:.1} s ({:.0} events/s), {} chunk retries, {} duplicates; node \
             restart (SIGTERM to ready) {:.1} s\n",
            self.publish_seconds,
            events as f64 / self.publish_seconds.max(1e-6),
            self.retries,
            self.duplicates,
            self.driven.node_restart_took.as_secs_f64()
        );
        println!("| process | CPU s | CPU µs/event | share of one core |");
        println!("|---|---:|---:|---:|");
        for (name, micros) in &self.cpu {
            println!(
                "| {name} | {:.1} | {:.0} | {:.0} % |",
                micros / 1e6,
                micros / events as f64,
                micros / 1e6 / wall * 100.0
            );
        }
    }
}
