//! One parser for `iptables-save` text: it splits a save into chains and tokenizes each
//! rule, and nothing more (what kube-proxy's chains mean is `installed`'s job). Everything
//! that reads iptables-save output goes through it: the read-back at start, the owner and
//! hint checks, the kube-proxy cleanup, and `proxyctl`.
//!
//! iptables-save does not print rules as they were written. It groups rules by chain and
//! sorts the chains by name; it prints `-s`, `-d`, `-p` first and then each `-m` module
//! with its options (`-m tcp -p tcp -d X --dport P` comes back as `-d X/32 -p tcp -m tcp
//! --dport P`); it appends `/32`; it adds defaults (`--mask 255.255.255.255 --rsource`,
//! `--reject-with icmp-port-unreachable`); it prints probabilities as the kernel stores them
//! (`0.3333333333` comes back as `0.33333333349`); and it quotes a comment (with `\"` and
//! `\\` escapes) as soon as it holds anything but letters, digits, `_` and `-`. So every
//! rule is tokenized and its options are looked up by name, never by position. A line that
//! cannot be read is skipped and returned as a [`BadLine`].

use std::collections::HashMap;

/// The two tables kube-proxy writes services to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    Nat,
    Filter,
}

impl Table {
    pub const fn as_str(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

/// `[packets:bytes]` as iptables-save -c prints it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// Why a line was skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("unterminated double-quoted string")]
    UnterminatedQuote,
    #[error("malformed counters {text:?}: expected [packets:bytes]")]
    BadCounters { text: String },
    #[error("malformed chain declaration: expected `:CHAIN POLICY [packets:bytes]`")]
    BadDeclaration,
    #[error("expected `-A CHAIN ...`, found {found:?}")]
    NotARule { found: String },
    #[error("argument {arg:?} does not follow an option")]
    StrayArgument { arg: String },
}

/// A line of the input that was not understood, and left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedLine {
    pub table: Table,
    /// 1-based, within the text given for that table.
    pub line: usize,
    pub text: String,
    pub error: LineError,
}

impl std::fmt::Display for SkippedLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "iptables-save ({}) line {} not understood ({}): {}",
            self.table.as_str(),
            self.line,
            self.error,
            self.text
        )
    }
}

/// One option of a rule: `-d 198.19.0.10/32`, `! -s 198.18.0.0/15`, `--set`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Opt {
    name: String,
    negated: bool,
    values: Vec<String>,
}

/// One `-A` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// `None` when the text was saved without `-c`.
    pub counters: Option<Counters>,
    /// The rule as printed, from `-A` on (without the counters).
    pub text: String,
    /// Every option after `-A CHAIN`, in printed order.
    opts: Vec<Opt>,
    /// Index in `opts` of `-j`/`-g`; the options after it belong to the target.
    target_at: Option<usize>,
}

impl Rule {
    /// The rule after `-A`: the chain and its options, as `-D` takes them.
    pub fn spec(&self) -> &str {
        self.text
            .split_once(char::is_whitespace)
            .map_or("", |(_, rest)| rest.trim_start())
    }

    /// Packets counted by this rule, 0 without counters.
    pub fn packets(&self) -> u64 {
        self.counters.map_or(0, |c| c.packets)
    }

    /// The `-j` (or `-g`) target: a chain name or `DNAT`, `REJECT`, ...
    pub fn target(&self) -> Option<&str> {
        self.target_at
            .and_then(|i| self.opts.get(i))
            .and_then(|o| o.values.first())
            .map(String::as_str)
    }

    /// The `--comment` text, unquoted.
    pub fn comment(&self) -> Option<&str> {
        self.value("--comment")
    }

    /// The value of the first non-negated option called `name` (`-d`, `--dport`, ...).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.opts
            .iter()
            .find(|o| o.name == name && !o.negated)
            .and_then(|o| o.values.first())
            .map(String::as_str)
    }

    /// Whether the rule has a non-negated option called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.opts.iter().any(|o| o.name == name && !o.negated)
    }

    /// The match options: everything before the target.
    fn matches(&self) -> &[Opt] {
        let end = self.target_at.unwrap_or(self.opts.len());
        self.opts.get(..end).unwrap_or(&[])
    }

    /// A jump taken by every packet that reaches it: its only matches are the comment.
    pub fn is_unconditional(&self) -> bool {
        self.target().is_some()
            && self.matches().iter().all(|o| match o.name.as_str() {
                "-m" => o.values.first().is_some_and(|m| m == "comment"),
                "--comment" => true,
                _ => false,
            })
    }
}

/// A chain: its declaration (if one was printed) and its rules in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// `ACCEPT`, `DROP` for a built-in chain; `None` for a user chain (printed `-`).
    pub policy: Option<String>,
    /// The declaration's counters (only built-in chains count).
    pub counters: Option<Counters>,
    /// Whether a `:CHAIN` line was seen (rules may name a chain that was not declared).
    pub declared: bool,
    pub rules: Vec<Rule>,
}

/// A line of a save that could not be read, and was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based, within the text given.
    pub line: usize,
    pub text: String,
    pub error: LineError,
}

impl BadLine {
    /// The line, reported as one of `table`'s.
    pub fn in_table(self, table: Table) -> SkippedLine {
        SkippedLine {
            table,
            line: self.line,
            text: self.text,
            error: self.error,
        }
    }
}

/// One table's chains, in the order iptables-save printed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedTable {
    chains: Vec<Chain>,
    index: HashMap<String, usize>,
}

impl SavedTable {
    /// Reads the `*section` part of an iptables-save text (`nat`, `filter`, `mangle`), and
    /// the lines before any `*table` line as part of it; with `None`, every section, as if
    /// they were one table (to count rules or look for a chain over a whole save).
    pub fn read(text: &str, section: Option<&str>) -> (Self, Vec<BadLine>) {
        let mut out = SavedTable::default();
        let mut bad = Vec::new();
        // `None`: outside any section, which counts as `section`.
        let mut current: Option<&str> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                current = Some(name.trim());
                continue;
            }
            if line == "COMMIT" {
                current = None;
                continue;
            }
            if let (Some(wanted), Some(current)) = (section, current)
                && wanted != current
            {
                continue;
            }
            let result = match line.strip_prefix(':') {
                Some(declaration) => {
                    parse_declaration(declaration).map(|(name, policy, counters)| {
                        let chain = out.chain_mut(name);
                        chain.declared = true;
                        chain.policy = policy;
                        chain.counters = counters;
                    })
                }
                None => parse_rule(line).map(|rule| {
                    out.chain_mut(&rule.chain).rules.push(rule);
                }),
            };
            if let Err(error) = result {
                bad.push(BadLine {
                    line: n + 1,
                    text: raw.to_owned(),
                    error,
                });
            }
        }
        (out, bad)
    }

    /// Reads one of the tables kube-proxy writes; unreadable lines go to `skipped`.
    pub fn read_table(table: Table, text: &str, skipped: &mut Vec<SkippedLine>) -> Self {
        let (out, bad) = Self::read(text, Some(table.as_str()));
        skipped.extend(bad.into_iter().map(|b| b.in_table(table)));
        out
    }

    fn chain_mut(&mut self, name: &str) -> &mut Chain {
        let at = match self.index.get(name) {
            Some(at) => *at,
            None => {
                self.chains.push(Chain {
                    name: name.to_owned(),
                    ..Chain::default()
                });
                let at = self.chains.len() - 1;
                self.index.insert(name.to_owned(), at);
                at
            }
        };
        &mut self.chains[at]
    }

    /// Every chain, in printed order.
    pub fn chains(&self) -> &[Chain] {
        &self.chains
    }

    /// The rules of one chain, as printed; empty if there is no such chain.
    pub fn rules(&self, chain: &str) -> &[Rule] {
        self.index
            .get(chain)
            .and_then(|at| self.chains.get(*at))
            .map_or(&[], |c| c.rules.as_slice())
    }

    /// The chains declared (`:NAME POLICY [counters]` lines), in printed order.
    pub fn declared(&self) -> impl Iterator<Item = &str> {
        self.chains
            .iter()
            .filter(|c| c.declared)
            .map(|c| c.name.as_str())
    }

    /// Whether `chain` is declared.
    pub fn declares(&self, chain: &str) -> bool {
        self.index
            .get(chain)
            .and_then(|at| self.chains.get(*at))
            .is_some_and(|c| c.declared)
    }

    /// Every rule of every chain, in printed order of the chains.
    pub fn all_rules(&self) -> impl Iterator<Item = &Rule> {
        self.chains.iter().flat_map(|c| &c.rules)
    }
}

/// `KUBE-SERVICES - [0:0]` (after the `:`).
fn parse_declaration(text: &str) -> Result<(&str, Option<String>, Option<Counters>), LineError> {
    let mut words = text.split_whitespace();
    let (Some(name), Some(policy)) = (words.next(), words.next()) else {
        return Err(LineError::BadDeclaration);
    };
    let counters = words.next().map(parse_counters).transpose()?;
    if words.next().is_some() {
        return Err(LineError::BadDeclaration);
    }
    Ok((name, (policy != "-").then(|| policy.to_owned()), counters))
}

fn parse_counters(text: &str) -> Result<Counters, LineError> {
    let bad = || LineError::BadCounters {
        text: text.to_owned(),
    };
    let (packets, bytes) = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.split_once(':'))
        .ok_or_else(bad)?;
    Ok(Counters {
        packets: packets.parse().map_err(|_| bad())?,
        bytes: bytes.parse().map_err(|_| bad())?,
    })
}

/// `[p:b] -A CHAIN options...`
fn parse_rule(line: &str) -> Result<Rule, LineError> {
    let (counters, text) = match line.strip_prefix('[') {
        Some(_) => {
            let (counters, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            (Some(parse_counters(counters)?), rest.trim_start())
        }
        None => (None, line),
    };
    let tokens = tokenize(text)?;
    let mut tokens = tokens.into_iter();
    let chain = match (tokens.next(), tokens.next()) {
        (Some(a), Some(chain))
            if !a.quoted && (a.text == "-A" || a.text == "--append") && !chain.text.is_empty() =>
        {
            chain.text
        }
        (first, _) => {
            return Err(LineError::NotARule {
                found: first.map(|t| t.text).unwrap_or_default(),
            });
        }
    };
    let rest: Vec<Token> = tokens.collect();
    let mut opts: Vec<Opt> = Vec::new();
    let mut target_at = None;
    let mut negate_next = false;
    for (i, token) in rest.iter().enumerate() {
        if !token.quoted && token.text == "!" {
            // `! -s X` negates the next option; the older `-s ! X` the current one.
            match rest.get(i + 1) {
                Some(next) if is_option(next) => negate_next = true,
                _ => match opts.last_mut() {
                    Some(last) => last.negated = true,
                    None => negate_next = true,
                },
            }
            continue;
        }
        if is_option(token) {
            let name = canonical(&token.text);
            if matches!(name, "-j" | "-g") {
                target_at = Some(opts.len());
            }
            opts.push(Opt {
                name: name.to_owned(),
                negated: std::mem::take(&mut negate_next),
                values: Vec::new(),
            });
            continue;
        }
        match opts.last_mut() {
            Some(last) => last.values.push(token.text.clone()),
            None => {
                return Err(LineError::StrayArgument {
                    arg: token.text.clone(),
                });
            }
        }
    }
    Ok(Rule {
        chain,
        counters,
        text: text.to_owned(),
        opts,
        target_at,
    })
}

/// An option name: `-d`, `--dport`; not a quoted string, a negative number or `-`.
fn is_option(token: &Token) -> bool {
    !token.quoted
        && token.text.len() > 1
        && token.text.starts_with('-')
        && !token.text[1..].starts_with(|c: char| c.is_ascii_digit())
}

/// The short or usual form iptables-save prints.
fn canonical(name: &str) -> &str {
    match name {
        "--source" | "--src" => "-s",
        "--destination" | "--dst" => "-d",
        "--protocol" => "-p",
        "--jump" => "-j",
        "--goto" => "-g",
        "--match" => "-m",
        "--in-interface" => "-i",
        "--out-interface" => "-o",
        "--destination-port" => "--dport",
        "--source-port" => "--sport",
        other => other,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Token {
    text: String,
    /// Some of it was inside double quotes: never an option or `!`.
    quoted: bool,
}

/// Splits on whitespace; `"..."` may hold spaces, with `\"` and `\\` escaped; the quotes
/// are stripped.
fn tokenize(text: &str) -> Result<Vec<Token>, LineError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(tokens);
        }
        let mut token = Token {
            text: String::new(),
            quoted: false,
        };
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            if c != '"' {
                token.text.push(c);
                continue;
            }
            token.quoted = true;
            loop {
                match chars.next() {
                    None => return Err(LineError::UnterminatedQuote),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(escaped) => token.text.push(escaped),
                        None => return Err(LineError::UnterminatedQuote),
                    },
                    Some(other) => token.text.push(other),
                }
            }
        }
        tokens.push(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHOLE_SAVE: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
-A PREROUTING -d 198.18.0.1/32 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-SERVICES -j KUBE-NODEPORTS
-A KUBE-SERVICES -m comment --comment \"unterminated -j RETURN
COMMIT
";

    #[test]
    fn a_section_or_the_whole_save() {
        let (nat, bad) = SavedTable::read(WHOLE_SAVE, Some("nat"));
        assert_eq!(
            nat.declared().collect::<Vec<_>>(),
            ["PREROUTING", "KUBE-SERVICES"]
        );
        assert!(nat.declares("KUBE-SERVICES"));
        // A jump's target is not a chain of the save.
        assert!(nat.chains().iter().all(|c| c.name != "KUBE-NODEPORTS"));
        assert!(!nat.declares("KUBE-IPTABLES-HINT"));
        assert_eq!(nat.rules("KUBE-SERVICES").len(), 1);
        assert_eq!(nat.all_rules().count(), 2);
        assert_eq!(
            bad,
            [BadLine {
                line: 12,
                text: "-A KUBE-SERVICES -m comment --comment \"unterminated -j RETURN".into(),
                error: LineError::UnterminatedQuote,
            }]
        );
        assert_eq!(bad[0].clone().in_table(Table::Nat).table, Table::Nat,);
        let (all, _) = SavedTable::read(WHOLE_SAVE, None);
        assert!(all.declares("KUBE-IPTABLES-HINT") && all.declares("KUBE-SERVICES"));
        assert_eq!(all.all_rules().count(), 3);
        let (mangle, bad) = SavedTable::read(WHOLE_SAVE, Some("mangle"));
        assert!(bad.is_empty());
        assert_eq!(mangle.all_rules().count(), 1);
        assert_eq!(
            mangle.rules("PREROUTING")[0].spec(),
            "PREROUTING -d 198.18.0.1/32 -j ACCEPT"
        );
    }

    #[test]
    fn tokens_respect_quotes_and_escapes() {
        // A real iptables-nft-save line: a comment with quotes and spaces, and a negated
        // module option.
        let rule = parse_rule(
            r#"-A KUBE-SERVICES -m comment --comment "say \"hi\" ok" -m addrtype ! --src-type LOCAL -j RETURN"#,
        )
        .expect("parses");
        assert_eq!(rule.chain, "KUBE-SERVICES");
        assert_eq!(rule.counters, None);
        assert_eq!(rule.comment(), Some("say \"hi\" ok"));
        assert_eq!(rule.value("--src-type"), None);
        assert!(!rule.has("--src-type"));
        assert_eq!(rule.target(), Some("RETURN"));
        assert!(!rule.is_unconditional());

        // The older `--opt ! value` negation, long option names, an unquoted comment.
        let rule = parse_rule(
            "[5:300] -A X --source ! 10.0.0.0/8 --match comment --comment plain --jump MARK --set-xmark 0x4000/0x4000",
        )
        .expect("parses");
        assert_eq!(
            rule.counters,
            Some(Counters {
                packets: 5,
                bytes: 300
            })
        );
        assert_eq!(rule.value("-s"), None);
        assert_eq!(rule.comment(), Some("plain"));
        assert_eq!(rule.target(), Some("MARK"));
        assert_eq!(rule.value("--set-xmark"), Some("0x4000/0x4000"));

        let unconditional =
            parse_rule("-A KUBE-EXT-X -m comment --comment \"a b\" -j KUBE-SVC-X").expect("parses");
        assert!(unconditional.is_unconditional());
        assert!(
            parse_rule("-A KUBE-EXT-X -j KUBE-SVC-X")
                .expect("parses")
                .is_unconditional()
        );
        assert_eq!(
            tokenize("a \"b c").map(|_| ()),
            Err(LineError::UnterminatedQuote)
        );
        assert_eq!(
            tokenize("\"\" x").expect("tokens")[0],
            Token {
                text: String::new(),
                quoted: true
            }
        );
    }
}
