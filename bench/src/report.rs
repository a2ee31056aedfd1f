//! The results: a Markdown table per scenario, a table of targets, and the same figures as JSON.

use serde_json::{json, Value};

/// One scenario's table and raw figures.
pub struct Section {
    pub id: &'static str,
    pub title: String,
    pub notes: Vec<String>,
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    pub data: Value,
    pub error: Option<String>,
}

impl Section {
    pub fn new(id: &'static str, title: &str, columns: &[&'static str]) -> Section {
        Section {
            id,
            title: title.to_string(),
            notes: Vec::new(),
            columns: columns.to_vec(),
            rows: Vec::new(),
            data: json!({}),
            error: None,
        }
    }
}

/// A target from the issue and what was measured against it.
pub struct Target {
    pub scenario: &'static str,
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub value: Option<f64>,
    pub met: Option<bool>,
}

pub struct Report {
    pub mode: String,
    pub command: String,
    pub machine: Value,
    pub sections: Vec<Section>,
    pub targets: Vec<Target>,
    pub elapsed_s: f64,
}

pub fn fmt(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}

impl Report {
    pub fn target(
        &mut self,
        scenario: &'static str,
        what: &str,
        goal: &str,
        measured: String,
        value: Option<f64>,
        met: Option<bool>,
    ) {
        self.targets.push(Target {
            scenario,
            what: what.to_string(),
            goal: goal.to_string(),
            measured,
            value,
            met,
        });
    }

    /// Targets in scenario order (1, 1b, 2, ..), stable within a scenario.
    fn sorted_targets(&self) -> Vec<&Target> {
        let mut t: Vec<&Target> = self.targets.iter().collect();
        t.sort_by(|a, b| a.scenario.cmp(b.scenario));
        t
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "# pollgate benchmark results ({} mode)\n\n",
            self.mode
        ));
        s.push_str(&format!("Command: `{}`  \n", self.command));
        let m = &self.machine;
        s.push_str(&format!(
            "Machine: {} CPUs, {}, {} MiB RAM, Linux {}; load average at start {}  \n",
            m["nproc"],
            m["cpu_model"].as_str().unwrap_or("?"),
            m["mem_mib"],
            m["kernel"].as_str().unwrap_or("?"),
            m["loadavg_at_start"].as_str().unwrap_or("?")
        ));
        s.push_str(&format!(
            "Tools: {}; {}; pinning: {}  \n",
            m["wrk"].as_str().unwrap_or("wrk: none"),
            m["nginx"].as_str().unwrap_or("nginx: none"),
            m["pinning"].as_str().unwrap_or("none")
        ));
        s.push_str(&format!("Run time: {:.0} s\n\n", self.elapsed_s));
        if !self.targets.is_empty() {
            s.push_str("## Targets\n\n| Scenario | Target | Goal | Measured | Met |\n|---|---|---|---|---|\n");
            for t in self.sorted_targets() {
                let met = match t.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "n/a",
                };
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    t.scenario, t.what, t.goal, t.measured, met
                ));
            }
            s.push('\n');
        }
        for sec in &self.sections {
            s.push_str(&format!("## {}\n\n", sec.title));
            for n in &sec.notes {
                s.push_str(&format!("{n}\n"));
            }
            if !sec.notes.is_empty() {
                s.push('\n');
            }
            if let Some(e) = &sec.error {
                s.push_str(&format!("**Scenario failed:** {e}\n\n"));
            }
            if !sec.rows.is_empty() {
                s.push_str(&format!("| {} |\n", sec.columns.join(" | ")));
                s.push_str(&format!("|{}\n", "---|".repeat(sec.columns.len())));
                for r in &sec.rows {
                    s.push_str(&format!("| {} |\n", r.join(" | ")));
                }
                s.push('\n');
            }
        }
        s
    }

    pub fn json(&self) -> Value {
        let scenarios: serde_json::Map<String, Value> = self
            .sections
            .iter()
            .map(|sec| {
                let mut d = sec.data.clone();
                if let Some(e) = &sec.error {
                    d["error"] = json!(e);
                }
                d["title"] = json!(sec.title);
                (sec.id.to_string(), d)
            })
            .collect();
        json!({
            "mode": self.mode,
            "command": self.command,
            "machine": self.machine,
            "elapsed_s": (self.elapsed_s * 10.0).round() / 10.0,
            "scenarios": scenarios,
            "targets": self.sorted_targets().iter().map(|t| json!({
                "scenario": t.scenario,
                "target": t.what,
                "goal": t.goal,
                "measured": t.measured,
                "value": t.value,
                "met": t.met,
            })).collect::<Vec<_>>(),
        })
    }
}
