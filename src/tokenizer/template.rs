//! Chat templates: the Jinja template stored in `tokenizer.chat_template`, rendered with
//! minijinja the way Hugging Face's `apply_chat_template` renders it with Python Jinja2
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`, `tojson`,
//! `strftime_now`).
//!
//! Models without a template get a fallback chosen by architecture: Gemma's turn format
//! for `gemma*`, ChatML otherwise (documented in the README).

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// ChatML, the fallback for models that carry no template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turn format (system text folded into the first user turn, as Gemma's own
/// template does), the fallback for `gemma*` files without a template.
pub const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% set ns = namespace(sys='') %}{% for message in messages %}{% if message['role'] == 'system' %}{% set ns.sys = message['content'] + '\n\n' %}{% else %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (ns.sys if loop.index0 <= 1 else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template does not parse: {0}")]
    Parse(String),
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// One chat message, as OpenAI's chat API and Hugging Face's templates spell it: a role
/// and its text, and for tool use the assistant's `tool_calls` and a tool reply's
/// `tool_call_id` / `name`. Fields a message lacks stay undefined in the template (not
/// `none`), so `is defined` tests behave as in Python.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    /// The text; a JSON `null` (an assistant turn that only calls tools) reads as empty.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), tool_calls: None, tool_call_id: None, name: None }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Whether the template came from the model file (false: a fallback).
    pub from_model: bool,
}

impl ChatTemplate {
    /// Compiles `source` (or the fallback for `architecture` when `None`).
    pub fn new(
        source: Option<&str>,
        architecture: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self, TemplateError> {
        let from_model = source.is_some();
        let source = source.unwrap_or(if architecture.starts_with("gemma") { GEMMA_TEMPLATE } else { CHATML_TEMPLATE });
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string()).map_err(|e| TemplateError::Parse(e.to_string()))?;
        Ok(Self { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string(), from_model })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the
    /// assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, TemplateError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`Self::render`] offering the model `tools` (OpenAI-style function schemas, passed
    /// to the template as `tools` the way `apply_chat_template(tools=…)` does; a template
    /// that knows no tools ignores them).
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template("chat").map_err(|e| TemplateError::Parse(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| TemplateError::Render(format!("{e:#}")))
    }
}

/// `tojson` as Hugging Face's chat templating defines it: Python's
/// `json.dumps(x, ensure_ascii=False, indent=indent)` — keys in insertion order, `", "` and
/// `": "` separators (`","` between items when indenting), no HTML escaping. (minijinja's
/// built-in writes compact JSON, which changes the prompt the model sees.)
fn tojson(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let formatter = PythonJson { indent: indent.map(|n| vec![b' '; n]), open: Vec::new() };
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(&value, &mut ser)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    String::from_utf8(out).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// serde_json formatting that reproduces Python's `json.dumps` separators and indents.
struct PythonJson {
    indent: Option<Vec<u8>>,
    /// One entry per open array or object: whether it has items yet.
    open: Vec<bool>,
}

impl PythonJson {
    fn newline<W: ?Sized + std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        if let Some(unit) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.open.len() {
                w.write_all(unit)?;
            }
        }
        Ok(())
    }

    fn separator<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            w.write_all(if self.indent.is_some() { b"," } else { b", " })?;
        }
        if let Some(has_items) = self.open.last_mut() {
            *has_items = true;
        }
        self.newline(w)
    }

    fn close<W: ?Sized + std::io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> std::io::Result<()> {
        // Python writes empty containers as `[]` / `{}` even when indenting.
        if self.open.pop() == Some(true) {
            self.newline(w)?;
        }
        w.write_all(bracket)
    }
}

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open.push(false);
        w.write_all(b"[")
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"]")
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        self.separator(w, first)
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open.push(false);
        w.write_all(b"{")
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"}")
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        self.separator(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// `strftime_now(fmt)` for templates that stamp today's date (Llama 3.x). Supports the
/// specifiers templates use: `%d %m %Y %y %b %B %a %A %H %M %S %j %e %%`, in UTC.
fn strftime_now(fmt: &str) -> Result<String, Error> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(format_time(secs, fmt))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];

/// Formats Unix time `secs` (UTC) with a strftime-style `fmt`.
pub fn format_time(secs: u64, fmt: &str) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let weekday = WEEKDAYS[days.rem_euclid(7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_strftime() {
        // 2026-11-26 06:13:25 UTC, a Thursday.
        let t = 1_795_673_605;
        assert_eq!(format_time(t, "%d %b %Y"), "26 Nov 2026");
        assert_eq!(format_time(t, "%A %B %e, %H:%M:%S %j %%"), "Thursday November 26, 06:13:25 330 %");
        assert_eq!(format_time(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
        assert_eq!(format_time(951_782_400, "%Y-%m-%d"), "2000-02-29");
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = ChatTemplate::new(Some("{{ raise_exception('no system role') }}"), "llama", "", "").unwrap();
        let e = t.render(&[], false).unwrap_err();
        assert!(e.to_string().contains("no system role"), "{e}");
    }

    #[test]
    fn python_string_methods_and_tojson_work() {
        let src = "{% for m in messages %}{{ m['content'].strip().upper() }}|{{ m | tojson }}|{{ [1, 'é', [], {}] | tojson(indent=2) }}{% endfor %}";
        let t = ChatTemplate::new(Some(src), "llama", "", "").unwrap();
        let out = t.render(&[Message::new("user", "  hi <b>")], false).unwrap();
        // Python: json.dumps(m, ensure_ascii=False) and json.dumps([1, "é", [], {}], indent=2).
        assert_eq!(out, "HI <B>|{\"role\": \"user\", \"content\": \"  hi <b>\"}|[\n  1,\n  \"é\",\n  [],\n  {}\n]");
    }

    #[test]
    fn fallbacks_render_turns() {
        let msgs = [Message::new("system", "Be brief."), Message::new("user", "Hi")];
        let chatml = ChatTemplate::new(None, "llama", "<s>", "</s>").unwrap().render(&msgs, true).unwrap();
        assert_eq!(
            chatml,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let gemma = ChatTemplate::new(None, "gemma3", "<bos>", "<eos>").unwrap().render(&msgs, true).unwrap();
        assert_eq!(gemma, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
    }
}
