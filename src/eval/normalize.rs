//! English text normalisation for scoring, following the behaviour of Whisper's
//! `EnglishTextNormalizer` (openai/whisper, MIT): lower case; bracketed and parenthesised text
//! and fillers (hmm, uh, um…) removed; contractions and titles expanded ("won't" → "will not",
//! "mr" → "mister"); digit commas dropped; punctuation and symbols removed (diacritics folded);
//! spelled-out numbers turned into digits ("twenty one" → "21", "one oh one" → "101",
//! "five percent" → "5%"); British spellings mapped to American (assets/english_spellings.json,
//! the same list Whisper ships).

use regex::{Captures, Regex};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;

struct Patterns {
    brackets: Regex,
    parens: Regex,
    fillers: Regex,
    space_apostrophe: Regex,
    replacers: Vec<(Regex, &'static str)>,
    digit_commas: Regex,
    periods: Regex,
    marks: Regex,
    nonspacing: Regex,
    prefix_symbols: Regex,
    suffix_percent: Regex,
    spaces: Regex,
    and_a_half: Regex,
    letter_digit: Regex,
    digit_letter: Regex,
    digit_suffix: Regex,
    cents_combine: Regex,
    cents_extract: Regex,
    literal_one: Regex,
    numeric: Regex,
    spellings: HashMap<String, String>,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let r = |s: &str| Regex::new(s).expect("static pattern");
        let replacers: Vec<(&str, &'static str)> = vec![
            (r"\bwon't\b", "will not"),
            (r"\bcan't\b", "can not"),
            (r"\blet's\b", "let us"),
            (r"\bain't\b", "aint"),
            (r"\by'all\b", "you all"),
            (r"\bwanna\b", "want to"),
            (r"\bgotta\b", "got to"),
            (r"\bgonna\b", "going to"),
            (r"\bi'ma\b", "i am going to"),
            (r"\bimma\b", "i am going to"),
            (r"\bwoulda\b", "would have"),
            (r"\bcoulda\b", "could have"),
            (r"\bshoulda\b", "should have"),
            (r"\bma'am\b", "madam"),
            (r"\bmr\b", "mister "),
            (r"\bmrs\b", "missus "),
            (r"\bst\b", "saint "),
            (r"\bdr\b", "doctor "),
            (r"\bprof\b", "professor "),
            (r"\bcapt\b", "captain "),
            (r"\bgov\b", "governor "),
            (r"\bald\b", "alderman "),
            (r"\bgen\b", "general "),
            (r"\bsen\b", "senator "),
            (r"\brep\b", "representative "),
            (r"\bpres\b", "president "),
            (r"\brev\b", "reverend "),
            (r"\bhon\b", "honorable "),
            (r"\basst\b", "assistant "),
            (r"\bassoc\b", "associate "),
            (r"\blt\b", "lieutenant "),
            (r"\bcol\b", "colonel "),
            (r"\bjr\b", "junior "),
            (r"\bsr\b", "senior "),
            (r"\besq\b", "esquire "),
            (r"'d been\b", " had been"),
            (r"'s been\b", " has been"),
            (r"'d gone\b", " had gone"),
            (r"'s gone\b", " has gone"),
            (r"'d done\b", " had done"),
            (r"'s got\b", " has got"),
            (r"n't\b", " not"),
            (r"'re\b", " are"),
            (r"'s\b", " is"),
            (r"'d\b", " would"),
            (r"'ll\b", " will"),
            (r"'t\b", " not"),
            (r"'ve\b", " have"),
            (r"'m\b", " am"),
        ];
        let spellings: HashMap<String, String> =
            serde_json::from_str(include_str!("../../assets/english_spellings.json")).expect("bundled spelling list is valid JSON");
        Patterns {
            brackets: r(r"[<\[][^>\]]*[>\]]"),
            parens: r(r"\(([^)]+?)\)"),
            fillers: r(r"\b(hmm|mm|mhm|mmm|uh|um)\b"),
            space_apostrophe: r(r"\s+'"),
            replacers: replacers.into_iter().map(|(p, s)| (r(p), s)).collect(),
            digit_commas: r(r"(\d),(\d)"),
            periods: r(r"\.([^0-9]|$)"),
            marks: r(r"[\p{M}\p{S}\p{P}]"),
            nonspacing: r(r"\p{Mn}"),
            prefix_symbols: r(r"[.$¢€£]([^0-9])"),
            suffix_percent: r(r"([^0-9])%"),
            spaces: r(r"\s+"),
            and_a_half: r(r"\band\s+a\s+half\b"),
            letter_digit: r(r"([a-z])([0-9])"),
            digit_letter: r(r"([0-9])([a-z])"),
            digit_suffix: r(r"([0-9])\s+(st|nd|rd|th|s)\b"),
            cents_combine: r(r"([€£$])([0-9]+) (?:and )?¢([0-9]{1,2})\b"),
            cents_extract: r(r"[€£$]0.([0-9]{1,2})\b"),
            literal_one: r(r"\b1(s?)\b"),
            numeric: r(r"^\d+(\.\d+)?$"),
            spellings,
        }
    })
}

/// Normalise English text for WER scoring.
pub fn normalize(text: &str) -> String {
    let p = patterns();
    let mut s = text.to_lowercase();
    s = p.brackets.replace_all(&s, "").into_owned();
    s = p.parens.replace_all(&s, "").into_owned();
    s = p.fillers.replace_all(&s, "").into_owned();
    s = p.space_apostrophe.replace_all(&s, "'").into_owned();
    for (re, rep) in &p.replacers {
        s = re.replace_all(&s, *rep).into_owned();
    }
    // Applied twice because matches overlap ("1,000,000").
    s = p.digit_commas.replace_all(&s, "$1$2").into_owned();
    s = p.digit_commas.replace_all(&s, "$1$2").into_owned();
    s = p.periods.replace_all(&s, " $1").into_owned();
    s = remove_symbols_and_diacritics(&s, ".%$¢€£");
    s = standardize_numbers(&s);
    s = s.split_whitespace().map(|w| p.spellings.get(w).map(String::as_str).unwrap_or(w)).collect::<Vec<_>>().join(" ");
    s = p.prefix_symbols.replace_all(&s, " $1").into_owned();
    s = p.suffix_percent.replace_all(&s, "$1 ").into_owned();
    s = p.spaces.replace_all(&s, " ").into_owned();
    s.trim().to_string()
}

fn additional_diacritic(c: char) -> Option<&'static str> {
    Some(match c {
        'œ' => "oe",
        'Œ' => "OE",
        'ø' => "o",
        'Ø' => "O",
        'æ' => "ae",
        'Æ' => "AE",
        'ß' => "ss",
        'ẞ' => "SS",
        'đ' | 'ð' => "d",
        'Đ' | 'Ð' => "D",
        'þ' | 'Þ' => "th",
        'ł' => "l",
        'Ł' => "L",
        _ => return None,
    })
}

/// NFKD, then: kept symbols stay, a few letters are spelled out, combining marks vanish, and
/// any other mark, symbol or punctuation becomes a space.
fn remove_symbols_and_diacritics(s: &str, keep: &str) -> String {
    let p = patterns();
    let mut out = String::with_capacity(s.len());
    let mut buf = [0u8; 4];
    for c in s.nfkd() {
        if keep.contains(c) {
            out.push(c);
        } else if let Some(rep) = additional_diacritic(c) {
            out.push_str(rep);
        } else {
            let cs: &str = c.encode_utf8(&mut buf);
            if p.nonspacing.is_match(cs) {
                continue;
            } else if p.marks.is_match(cs) {
                out.push(' ');
            } else {
                out.push(c);
            }
        }
    }
    out
}

/// A number being built: an integer while arithmetic applies, a digit string once words
/// are read as a sequence ("one oh one" → "101") or after a decimal point.
#[derive(Clone, Debug)]
enum Value {
    Int(u128),
    Str(String),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Str(s) => s.clone(),
        }
    }
}

/// Exact value of a decimal string, as (numerator, denominator), if it is one.
fn fraction(s: &str) -> Option<(u128, u128)> {
    let (int, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    if int.is_empty() && frac.is_empty() || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let num: u128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    let den = 10u128.checked_pow(frac.len() as u32)?;
    Some((num, den))
}

/// `value × multiplier` if it is a whole number.
fn scaled(value: &str, multiplier: u128) -> Option<u128> {
    let (num, den) = fraction(value)?;
    let p = num.checked_mul(multiplier)?;
    (p % den == 0).then(|| p / den)
}

struct NumberWords {
    zeros: HashSet<&'static str>,
    ones: HashMap<String, u128>,
    ones_suffixed: HashMap<String, (u128, &'static str)>,
    tens: HashMap<String, u128>,
    tens_suffixed: HashMap<String, (u128, &'static str)>,
    multipliers: HashMap<String, u128>,
    multipliers_suffixed: HashMap<String, (u128, &'static str)>,
    preceding_prefixers: HashMap<&'static str, &'static str>,
    following_prefixers: HashMap<&'static str, &'static str>,
    prefixes: HashSet<char>,
    words: HashSet<String>,
}

fn number_words() -> &'static NumberWords {
    static W: OnceLock<NumberWords> = OnceLock::new();
    W.get_or_init(|| {
        let ones_names = [
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ];
        let ones: HashMap<String, u128> = ones_names.iter().enumerate().map(|(i, n)| (n.to_string(), i as u128 + 1)).collect();
        let mut ones_suffixed: HashMap<String, (u128, &'static str)> = HashMap::new();
        for (name, &v) in &ones {
            let plural = if name == "six" { "sixes".to_string() } else { format!("{name}s") };
            ones_suffixed.insert(plural, (v, "s"));
        }
        for (name, v, suffix) in
            [("zeroth", 0, "th"), ("first", 1, "st"), ("second", 2, "nd"), ("third", 3, "rd"), ("fifth", 5, "th"), ("twelfth", 12, "th")]
        {
            ones_suffixed.insert(name.to_string(), (v, suffix));
        }
        for (name, &v) in &ones {
            if v > 3 && v != 5 && v != 12 {
                let ord = if name.ends_with('t') { format!("{name}h") } else { format!("{name}th") };
                ones_suffixed.insert(ord, (v, "th"));
            }
        }
        let tens: HashMap<String, u128> =
            [("twenty", 20), ("thirty", 30), ("forty", 40), ("fifty", 50), ("sixty", 60), ("seventy", 70), ("eighty", 80), ("ninety", 90)]
                .iter()
                .map(|(n, v)| (n.to_string(), *v))
                .collect();
        let mut tens_suffixed = HashMap::new();
        for (name, &v) in &tens {
            tens_suffixed.insert(name.replace('y', "ies"), (v, "s"));
            tens_suffixed.insert(name.replace('y', "ieth"), (v, "th"));
        }
        let mult_names = [
            "hundred",
            "thousand",
            "million",
            "billion",
            "trillion",
            "quadrillion",
            "quintillion",
            "sextillion",
            "septillion",
            "octillion",
            "nonillion",
            "decillion",
        ];
        let mut multipliers = HashMap::new();
        let mut value: u128 = 100;
        for (i, name) in mult_names.iter().enumerate() {
            if i == 1 {
                value = 1000;
            } else if i > 1 {
                value *= 1000;
            }
            multipliers.insert(name.to_string(), value);
        }
        let mut multipliers_suffixed = HashMap::new();
        for (name, &v) in &multipliers {
            multipliers_suffixed.insert(format!("{name}s"), (v, "s"));
            multipliers_suffixed.insert(format!("{name}th"), (v, "th"));
        }
        let zeros: HashSet<&'static str> = ["o", "oh", "zero"].into_iter().collect();
        let preceding_prefixers: HashMap<&str, &str> = [("minus", "-"), ("negative", "-"), ("plus", "+"), ("positive", "+")].into();
        let following_prefixers: HashMap<&str, &str> = [
            ("pound", "£"),
            ("pounds", "£"),
            ("euro", "€"),
            ("euros", "€"),
            ("dollar", "$"),
            ("dollars", "$"),
            ("cent", "¢"),
            ("cents", "¢"),
        ]
        .into();
        let prefixes: HashSet<char> =
            preceding_prefixers.values().chain(following_prefixers.values()).filter_map(|s| s.chars().next()).collect();
        let mut words: HashSet<String> = HashSet::new();
        words.extend(zeros.iter().map(|s| s.to_string()));
        words.extend(ones.keys().cloned());
        words.extend(ones_suffixed.keys().cloned());
        words.extend(tens.keys().cloned());
        words.extend(tens_suffixed.keys().cloned());
        words.extend(multipliers.keys().cloned());
        words.extend(multipliers_suffixed.keys().cloned());
        words.extend(preceding_prefixers.keys().map(|s| s.to_string()));
        words.extend(following_prefixers.keys().map(|s| s.to_string()));
        words.extend(["per", "percent", "and", "double", "triple", "point"].map(String::from));
        NumberWords {
            zeros,
            ones,
            ones_suffixed,
            tens,
            tens_suffixed,
            multipliers,
            multipliers_suffixed,
            preceding_prefixers,
            following_prefixers,
            prefixes,
            words,
        }
    })
}

fn standardize_numbers(s: &str) -> String {
    let p = patterns();
    // "two and a half" → "two point five"; otherwise "and a half" stays.
    let pieces: Vec<&str> = p.and_a_half.split(s).collect();
    let w = number_words();
    let mut results: Vec<String> = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        if piece.trim().is_empty() {
            continue;
        }
        results.push(piece.to_string());
        if i + 1 < pieces.len() {
            let last = piece.split_whitespace().last().unwrap_or("");
            let is_decimal_word = w.ones.contains_key(last) || w.tens.contains_key(last) || w.zeros.contains(last);
            if is_decimal_word || w.multipliers.contains_key(last) {
                results.push("point five".into());
            } else {
                results.push("and a half".into());
            }
        }
    }
    let mut s = results.join(" ");
    s = p.letter_digit.replace_all(&s, "$1 $2").into_owned();
    s = p.digit_letter.replace_all(&s, "$1 $2").into_owned();
    s = p.digit_suffix.replace_all(&s, "$1$2").into_owned();
    let words: Vec<&str> = s.split_whitespace().collect();
    s = process_number_words(&words).join(" ");
    s = p
        .cents_combine
        .replace_all(&s, |c: &Captures| match c[3].parse::<u32>() {
            Ok(cents) => format!("{}{}.{cents:02}", &c[1], &c[2]),
            Err(_) => c[0].to_string(),
        })
        .into_owned();
    s = p
        .cents_extract
        .replace_all(&s, |c: &Captures| match c[1].parse::<u32>() {
            Ok(cents) => format!("¢{cents}"),
            Err(_) => c[0].to_string(),
        })
        .into_owned();
    p.literal_one.replace_all(&s, "one$1").into_owned()
}

/// The word-by-word state machine of Whisper's `EnglishNumberNormalizer.process_words`.
fn process_number_words(words: &[&str]) -> Vec<String> {
    let w = number_words();
    let p = patterns();
    let mut out: Vec<String> = Vec::new();
    let mut prefix: Option<String> = None;
    let mut value: Option<Value> = None;
    let mut skip = false;
    let is_numeric = |s: &str| p.numeric.is_match(s);
    // Emit a result (with any pending prefix) and reset the state.
    let emit = |out: &mut Vec<String>, prefix: &mut Option<String>, value: &mut Option<Value>, result: String| {
        let r = match prefix.take() {
            Some(pre) => pre + &result,
            None => result,
        };
        *value = None;
        out.push(r);
    };
    for i in 0..words.len() {
        if skip {
            skip = false;
            continue;
        }
        let prev = if i > 0 { Some(words[i - 1]) } else { None };
        let current = words[i];
        let next = words.get(i + 1).copied();
        let next_is_numeric = next.is_some_and(is_numeric);
        let next_is_word = next.is_some_and(|n| w.words.contains(n));
        let first = current.chars().next().unwrap_or(' ');
        let has_prefix = w.prefixes.contains(&first);
        let without_prefix = if has_prefix { &current[first.len_utf8()..] } else { current };
        let prev_in = |m: &HashMap<String, u128>| prev.is_some_and(|p| m.contains_key(p));

        if is_numeric(without_prefix) {
            let (num, den) = fraction(without_prefix).expect("numeric");
            if let Some(v) = value.clone() {
                if let Value::Str(s) = &v {
                    if s.ends_with('.') {
                        value = Some(Value::Str(format!("{s}{current}")));
                        continue;
                    }
                }
                emit(&mut out, &mut prefix, &mut value, v.text());
            }
            if has_prefix {
                prefix = Some(first.to_string());
            }
            value = Some(if den == 1 { Value::Int(num) } else { Value::Str(without_prefix.to_string()) });
        } else if !w.words.contains(current) {
            if let Some(v) = value.clone() {
                emit(&mut out, &mut prefix, &mut value, v.text());
            }
            emit(&mut out, &mut prefix, &mut value, current.to_string());
        } else if w.zeros.contains(current) {
            let base = value.as_ref().map(Value::text).unwrap_or_default();
            value = Some(Value::Str(base + "0"));
        } else if let Some(&ones) = w.ones.get(current) {
            value = Some(match value.take() {
                None => Value::Int(ones),
                Some(Value::Str(s)) if prev_in(&w.tens) && ones < 10 => Value::Str(replace_last_zero(&s, ones)),
                Some(v @ Value::Str(_)) => Value::Str(v.text() + &ones.to_string()),
                Some(Value::Int(v)) if prev_in(&w.ones) => Value::Str(format!("{v}{ones}")),
                Some(Value::Int(v)) if ones < 10 => {
                    if v % 10 == 0 {
                        Value::Int(v + ones)
                    } else {
                        Value::Str(format!("{v}{ones}"))
                    }
                }
                Some(Value::Int(v)) => {
                    if v % 100 == 0 {
                        Value::Int(v + ones)
                    } else {
                        Value::Str(format!("{v}{ones}"))
                    }
                }
            });
        } else if let Some(&(ones, suffix)) = w.ones_suffixed.get(current) {
            let text = match value.take() {
                None => format!("{ones}{suffix}"),
                Some(Value::Str(s)) if prev_in(&w.tens) && ones < 10 => format!("{}{suffix}", replace_last_zero(&s, ones)),
                Some(Value::Str(s)) => format!("{s}{ones}{suffix}"),
                Some(Value::Int(v)) if prev_in(&w.ones) => format!("{v}{ones}{suffix}"),
                Some(Value::Int(v)) if ones < 10 => {
                    if v % 10 == 0 {
                        format!("{}{suffix}", v + ones)
                    } else {
                        format!("{v}{ones}{suffix}")
                    }
                }
                Some(Value::Int(v)) => {
                    if v % 100 == 0 {
                        format!("{}{suffix}", v + ones)
                    } else {
                        format!("{v}{ones}{suffix}")
                    }
                }
            };
            emit(&mut out, &mut prefix, &mut value, text);
        } else if let Some(&tens) = w.tens.get(current) {
            value = Some(match value.take() {
                None => Value::Int(tens),
                Some(Value::Str(s)) => Value::Str(format!("{s}{tens}")),
                Some(Value::Int(v)) => {
                    if v % 100 == 0 {
                        Value::Int(v + tens)
                    } else {
                        Value::Str(format!("{v}{tens}"))
                    }
                }
            });
        } else if let Some(&(tens, suffix)) = w.tens_suffixed.get(current) {
            let text = match value.take() {
                None => format!("{tens}{suffix}"),
                Some(Value::Str(s)) => format!("{s}{tens}{suffix}"),
                Some(Value::Int(v)) => {
                    if v % 100 == 0 {
                        format!("{}{suffix}", v + tens)
                    } else {
                        format!("{v}{tens}{suffix}")
                    }
                }
            };
            emit(&mut out, &mut prefix, &mut value, text);
        } else if let Some(&mult) = w.multipliers.get(current) {
            match value.take() {
                None => value = Some(Value::Int(mult)),
                Some(v @ (Value::Str(_) | Value::Int(0))) => match scaled(&v.text(), mult) {
                    Some(p) => value = Some(Value::Int(p)),
                    None => {
                        emit(&mut out, &mut prefix, &mut value, v.text());
                        value = Some(Value::Int(mult));
                    }
                },
                Some(Value::Int(v)) => {
                    let before = v / 1000 * 1000;
                    let residual = v % 1000;
                    value = Some(match residual.checked_mul(mult).and_then(|r| r.checked_add(before)) {
                        Some(x) => Value::Int(x),
                        None => Value::Str(format!("{v}{mult}")),
                    });
                }
            }
        } else if let Some(&(mult, suffix)) = w.multipliers_suffixed.get(current) {
            match value.take() {
                None => emit(&mut out, &mut prefix, &mut value, format!("{mult}{suffix}")),
                Some(Value::Str(s)) => match scaled(&s, mult) {
                    Some(p) => emit(&mut out, &mut prefix, &mut value, format!("{p}{suffix}")),
                    None => {
                        emit(&mut out, &mut prefix, &mut value, s);
                        emit(&mut out, &mut prefix, &mut value, format!("{mult}{suffix}"));
                    }
                },
                Some(Value::Int(v)) => {
                    let before = v / 1000 * 1000;
                    let residual = v % 1000;
                    let x = residual.saturating_mul(mult).saturating_add(before);
                    emit(&mut out, &mut prefix, &mut value, format!("{x}{suffix}"));
                }
            }
            value = None;
        } else if let Some(&sign) = w.preceding_prefixers.get(current) {
            if let Some(v) = value.clone() {
                emit(&mut out, &mut prefix, &mut value, v.text());
            }
            if next_is_word || next_is_numeric {
                prefix = Some(sign.to_string());
            } else {
                emit(&mut out, &mut prefix, &mut value, current.to_string());
            }
        } else if let Some(&symbol) = w.following_prefixers.get(current) {
            match value.clone() {
                Some(v) => {
                    prefix = Some(symbol.to_string());
                    emit(&mut out, &mut prefix, &mut value, v.text());
                }
                None => emit(&mut out, &mut prefix, &mut value, current.to_string()),
            }
        } else if current == "per" || current == "percent" {
            match value.clone() {
                Some(v) if current == "percent" => emit(&mut out, &mut prefix, &mut value, format!("{}%", v.text())),
                Some(v) => {
                    if next == Some("cent") {
                        emit(&mut out, &mut prefix, &mut value, format!("{}%", v.text()));
                        skip = true;
                    } else {
                        emit(&mut out, &mut prefix, &mut value, v.text());
                        emit(&mut out, &mut prefix, &mut value, current.to_string());
                    }
                }
                None => emit(&mut out, &mut prefix, &mut value, current.to_string()),
            }
        } else {
            // The specials: and, double, triple, point.
            if !next_is_word && !next_is_numeric {
                if let Some(v) = value.clone() {
                    emit(&mut out, &mut prefix, &mut value, v.text());
                }
                emit(&mut out, &mut prefix, &mut value, current.to_string());
            } else if current == "and" {
                if !prev_in(&w.multipliers) {
                    if let Some(v) = value.clone() {
                        emit(&mut out, &mut prefix, &mut value, v.text());
                    }
                    emit(&mut out, &mut prefix, &mut value, current.to_string());
                }
            } else if current == "double" || current == "triple" {
                let n = next.unwrap_or("");
                if w.ones.contains_key(n) || w.zeros.contains(n) {
                    let repeats = if current == "double" { 2 } else { 3 };
                    let digit = w.ones.get(n).copied().unwrap_or(0).to_string();
                    let base = value.as_ref().map(Value::text).unwrap_or_default();
                    value = Some(Value::Str(base + &digit.repeat(repeats)));
                    skip = true;
                } else {
                    if let Some(v) = value.clone() {
                        emit(&mut out, &mut prefix, &mut value, v.text());
                    }
                    emit(&mut out, &mut prefix, &mut value, current.to_string());
                }
            } else if current == "point" {
                let n = next.unwrap_or("");
                let is_decimal_word = w.ones.contains_key(n) || w.tens.contains_key(n) || w.zeros.contains(n);
                if is_decimal_word || next_is_numeric {
                    let base = value.as_ref().map(Value::text).unwrap_or_default();
                    value = Some(Value::Str(base + "."));
                }
            }
        }
    }
    if let Some(v) = value.clone() {
        emit(&mut out, &mut prefix, &mut value, v.text());
    }
    out
}

fn replace_last_zero(s: &str, digit: u128) -> String {
    match s.strip_suffix('0') {
        Some(stem) => format!("{stem}{digit}"),
        None => format!("{s}{digit}"),
    }
}
