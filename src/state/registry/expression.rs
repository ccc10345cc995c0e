//! CEL expressions that a client gives us, bounded in compile cost, run
//! cost and memory whatever their text looks like.
//!
//! The `cel` crate parses with generated recursive-descent code and
//! evaluates by recursion over its AST. A short hostile expression
//! (2,000 `+` terms, 3,000 `!`, deep parentheses) therefore overflows a
//! thread's stack, which is an abort, not a panic. So:
//!
//! - **Before parsing**, a lexical scan refuses nesting (brackets, runs of
//!   unary operators) deeper than [`MAX_NESTING`], with its position.
//! - **Parsing** runs on a scoped thread with [`COMPILE_STACK`] bytes of
//!   stack: far more than the 4 KiB source can need, so left-deep chains
//!   that the scan cannot see still parse, and are then refused by the
//!   AST bounds. A refused AST is dropped on that thread too (dropping a
//!   deep tree recurses as well).
//! - **The AST** is bounded: depth ≤ [`MAX_DEPTH`], nodes ≤ [`MAX_NODES`],
//!   comprehension (macro) nesting ≤ [`MAX_COMPREHENSION_NESTING`], and
//!   static amplification (how many input-sized values `+` can join) ≤
//!   [`MAX_AMPLIFICATION`]. Free variables other than `event` and message
//!   literals (which the evaluator cannot run) are refused. After this,
//!   evaluation recursion is bounded by the depth, so any thread with
//!   [`EVAL_STACK`] bytes evaluates any accepted expression.
//! - **Evaluation** has a budget of [`EVAL_BUDGET`] units. Each step of a
//!   comprehension (`all`, `exists`, `exists_one`, `map`, `filter`) is
//!   charged one unit plus the size of its accumulator, since the
//!   evaluator copies it at each step. Running out is an evaluation error,
//!   which a filter takes as "no match". A panic inside the evaluator
//!   (it has `todo!()`s for some value kinds) is caught and also counts
//!   as no match.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use cel::common::ast::{CallExpr, EntryExpr, Expr};
use cel::{FunctionContext, IdedExpr, Value};

/// Longest expression, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 4096;
/// Deepest bracket nesting, or longest run of unary operators, in the text.
pub const MAX_NESTING: usize = 32;
/// Deepest AST (macros expanded).
pub const MAX_DEPTH: usize = 48;
/// Most AST nodes (macros expanded: each macro adds about six).
pub const MAX_NODES: usize = 512;
/// Most comprehensions nested in one another.
pub const MAX_COMPREHENSION_NESTING: usize = 3;
/// Most input-sized values one expression may join with `+`.
pub const MAX_AMPLIFICATION: u64 = 16;
/// Evaluation units per evaluation (see the module docs).
pub const EVAL_BUDGET: u64 = 20_000;
/// Stack of the thread that parses and checks an expression.
pub const COMPILE_STACK: usize = 64 << 20;
/// Stack that evaluating any accepted expression fits in, with room to
/// spare (a debug build needs under a quarter of it; the test checks).
pub const EVAL_STACK: usize = 16 << 20;

/// The name of the budget function injected into every comprehension.
/// `@` cannot start a CEL identifier, so no expression can call it.
const BUDGET_FN: &str = "@ratatoskr_budget";

/// Why an expression was refused, with its position where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExpressionError {
    /// What is wrong.
    pub message: String,
    /// 1-based line and column, if known.
    pub position: Option<(usize, usize)>,
}

impl ExpressionError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            position: None,
        }
    }
}

/// A checked, budgeted CEL expression.
#[derive(Debug)]
pub struct Expression {
    ast: IdedExpr,
}

impl Expression {
    /// Parses and checks `src`. `variables` are the names it may use.
    pub fn compile(src: &str, variables: &[&str]) -> Result<Self, Vec<ExpressionError>> {
        if src.trim().is_empty() || src.len() > MAX_EXPRESSION_LEN {
            return Err(vec![ExpressionError::new(format!(
                "must be between 1 and {MAX_EXPRESSION_LEN} bytes"
            ))]);
        }
        check_nesting(src).map_err(|e| vec![e])?;
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("ratatoskr-cel-compile".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(scope, || parse_and_check(src, variables))
                .map_err(|e| vec![ExpressionError::new(format!("cannot compile now: {e}"))])?
                .join()
                .unwrap_or_else(|_| {
                    Err(vec![ExpressionError::new(
                        "the expression could not be parsed",
                    )])
                })
        })
    }

    /// Evaluates with `event` bound to `value`; `Ok(true)` only for a
    /// boolean `true`. Errors (including a spent budget) are `Err`.
    pub fn evaluate(&self, name: &str, value: &Value) -> Result<Value, String> {
        ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            ctx.add_variable_from_value(name, value.clone());
            SPENT.with(|s| s.set(0));
            match catch_unwind(AssertUnwindSafe(|| Value::resolve(&self.ast, &ctx))) {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the evaluator failed on this value".into()),
            }
        })
    }
}

thread_local! {
    // A root context (CEL's built-in functions plus the budget) per
    // thread: building one per evaluation would cost more than most
    // expressions.
    static ROOT: cel::Context<'static, 'static> = {
        let mut ctx = cel::Context::default();
        ctx.add_function(BUDGET_FN, charge)
            .expect("the budget function has a valid name");
        ctx
    };
    static SPENT: Cell<u64> = const { Cell::new(0) };
}

/// Charges one comprehension step: one unit plus the accumulator's size.
fn charge(ftx: &FunctionContext, accumulator: Value) -> cel::ResolveResult {
    let cost = 1 + weight(&accumulator);
    let spent = SPENT.with(|s| {
        let n = s.get().saturating_add(cost);
        s.set(n);
        n
    });
    if spent > EVAL_BUDGET {
        Err(ftx.error(format!(
            "evaluation budget of {EVAL_BUDGET} units exhausted"
        )))
    } else {
        Ok(Value::Bool(true))
    }
}

/// What copying `v` costs, in units: elements, and 64-byte blocks of text.
fn weight(v: &Value) -> u64 {
    fn shallow(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.len() as u64 / 64,
            Value::Bytes(b) => b.len() as u64 / 64,
            Value::List(l) => l.len() as u64,
            Value::Map(m) => m.map.len() as u64,
            _ => 0,
        }
    }
    match v {
        Value::List(l) => l.iter().map(|e| 1 + shallow(e)).sum(),
        other => shallow(other),
    }
}

/// Refuses text nested deeper than [`MAX_NESTING`]: brackets, and runs of
/// prefix operators (`!`, `-`). String literals are skipped.
fn check_nesting(src: &str) -> Result<(), ExpressionError> {
    let mut depth = 0usize;
    let mut unary_run = 0usize;
    let (mut line, mut col) = (1usize, 0usize);
    let mut chars = src.chars().peekable();
    let mut prev_significant: Option<char> = None;
    while let Some(c) = chars.next() {
        col += 1;
        if c == '\n' {
            line += 1;
            col = 0;
        }
        let too_deep = |what: &str| ExpressionError {
            message: format!("{what} is nested deeper than {MAX_NESTING} levels"),
            position: Some((line, col)),
        };
        match c {
            '"' | '\'' => {
                let raw = matches!(prev_significant, Some('r' | 'R'));
                skip_string(c, raw, &mut chars, &mut line, &mut col);
                prev_significant = Some(c);
                unary_run = 0;
                continue;
            }
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(too_deep("the expression"));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c.is_whitespace() {
            continue;
        }
        // A `!` or `-` is a prefix operator where an operand is expected.
        let operand_expected = prev_significant.is_none_or(|p| "([{,?:!-+*/%<>=&|".contains(p));
        if (c == '!' || c == '-') && operand_expected {
            unary_run += 1;
            if unary_run > MAX_NESTING {
                return Err(too_deep("a run of unary operators"));
            }
        } else if !"([{".contains(c) {
            unary_run = 0;
        }
        prev_significant = Some(c);
    }
    Ok(())
}

/// Skips a string literal whose opening quote was just read.
fn skip_string(
    quote: char,
    raw: bool,
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    line: &mut usize,
    col: &mut usize,
) {
    let mut step = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        let c = chars.next();
        *col += 1;
        if c == Some('\n') {
            *line += 1;
            *col = 0;
        }
        c
    };
    // Triple-quoted?
    let triple = {
        let mut ahead = chars.clone();
        ahead.next() == Some(quote) && ahead.next() == Some(quote)
    };
    if triple {
        step(chars);
        step(chars);
    } else if chars.peek() == Some(&quote) {
        // The empty string.
        step(chars);
        return;
    }
    let mut closing = 0;
    while let Some(c) = step(chars) {
        if c == '\\' && !raw {
            step(chars);
            closing = 0;
            continue;
        }
        if c == quote {
            closing += 1;
            if !triple || closing == 3 {
                return;
            }
        } else {
            closing = 0;
        }
    }
}

/// Runs on the compile thread: parse, bound, check variables, add budget.
fn parse_and_check(src: &str, variables: &[&str]) -> Result<Expression, Vec<ExpressionError>> {
    let parser = cel::parser::Parser::new().max_recursion_depth(MAX_NESTING as u16 * 4);
    let mut ast = parser.parse(src).map_err(|errs| {
        errs.errors
            .iter()
            .map(|e| ExpressionError {
                message: e.msg.clone(),
                position: Some((e.pos.0.max(1) as usize, e.pos.1.max(0) as usize + 1)),
            })
            .collect::<Vec<_>>()
    })?;
    let shape = measure(&ast);
    let mut errors = Vec::new();
    if shape.depth > MAX_DEPTH {
        errors.push(format!(
            "the expression is nested deeper than {MAX_DEPTH} levels (operators and field selections count)"
        ));
    }
    if shape.nodes > MAX_NODES {
        errors.push(format!(
            "the expression has more than {MAX_NODES} parts (macros count about six each)"
        ));
    }
    if errors.is_empty() {
        // Depth is bounded now, so the checks below may recurse.
        let mut check = Checker {
            variables,
            bound: Vec::new(),
            unknown: Vec::new(),
            nesting: 0,
            too_nested: false,
            structs: false,
        };
        let amplification = check.walk(&ast);
        if check.too_nested {
            errors.push(format!(
                "macros (all, exists, exists_one, map, filter) are nested deeper than {MAX_COMPREHENSION_NESTING} levels"
            ));
        }
        if check.structs {
            errors.push("message literals (`Type{field: value}`) are not supported".into());
        }
        if amplification > MAX_AMPLIFICATION {
            errors.push(format!(
                "the expression joins more than {MAX_AMPLIFICATION} values with `+`"
            ));
        }
        if !check.unknown.is_empty() {
            check.unknown.sort();
            check.unknown.dedup();
            errors.push(format!(
                "unknown variable(s) {}: the only variable is `{}`",
                check.unknown.join(", "),
                variables.join("`, `")
            ));
        }
    }
    if !errors.is_empty() {
        // Dropping a deep tree recurses: do it here, on the big stack.
        drop(ast);
        return Err(errors.into_iter().map(ExpressionError::new).collect());
    }
    add_budget(&mut ast);
    Ok(Expression { ast })
}

#[derive(Debug, Default)]
struct Shape {
    depth: usize,
    nodes: usize,
}

/// Depth and node count, without recursion.
fn measure(root: &IdedExpr) -> Shape {
    let mut shape = Shape::default();
    let mut stack = vec![(root, 1usize)];
    while let Some((e, d)) = stack.pop() {
        shape.nodes += 1;
        shape.depth = shape.depth.max(d);
        if shape.nodes > MAX_NODES * 4 {
            // Enough to refuse; no need to walk a huge tree to its end.
            break;
        }
        for child in children(e) {
            stack.push((child, d + 1));
        }
    }
    shape
}

/// The direct sub-expressions of `e`.
fn children(e: &IdedExpr) -> Vec<&IdedExpr> {
    match &e.expr {
        Expr::Call(c) => c.target.as_deref().into_iter().chain(&c.args).collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m.entries.iter().flat_map(entry_children).collect(),
        Expr::Struct(s) => s.entries.iter().flat_map(entry_children).collect(),
        Expr::Select(s) => vec![&s.operand],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn entry_children(e: &cel::common::ast::IdedEntryExpr) -> Vec<&IdedExpr> {
    match &e.expr {
        EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
        EntryExpr::StructField(f) => vec![&f.value],
    }
}

/// Scope-aware checks over a depth-bounded AST.
struct Checker<'a> {
    variables: &'a [&'a str],
    bound: Vec<String>,
    unknown: Vec<String>,
    nesting: usize,
    too_nested: bool,
    structs: bool,
}

impl Checker<'_> {
    /// Walks `e`; returns its amplification (how many input-sized values
    /// its result can hold).
    fn walk(&mut self, e: &IdedExpr) -> u64 {
        match &e.expr {
            Expr::Ident(name) => {
                if !self.bound.iter().any(|b| b == name) && !self.variables.contains(&name.as_str())
                {
                    self.unknown.push(name.clone());
                }
                1
            }
            // Literals are bounded by the text; only input can be large.
            Expr::Literal(_) | Expr::Unspecified => 0,
            Expr::Select(s) => {
                self.walk(&s.operand);
                1
            }
            Expr::Call(c) => self.call(c),
            Expr::List(l) => l.elements.iter().map(|x| self.walk(x)).sum::<u64>(),
            Expr::Map(m) => m
                .entries
                .iter()
                .flat_map(entry_children)
                .map(|x| self.walk(x))
                .sum::<u64>(),
            Expr::Struct(s) => {
                self.structs = true;
                for x in s.entries.iter().flat_map(entry_children) {
                    self.walk(x);
                }
                1
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range);
                self.walk(&c.accu_init);
                self.nesting += 1;
                if self.nesting > MAX_COMPREHENSION_NESTING {
                    self.too_nested = true;
                }
                let scope = self.bound.len();
                self.bound.push(c.accu_var.clone());
                self.bound.push(c.iter_var.clone());
                self.bound.extend(c.iter_var2.clone());
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                self.walk(&c.result);
                self.bound.truncate(scope);
                self.nesting -= 1;
                // The accumulator's size is charged at run time.
                1
            }
        }
    }

    fn call(&mut self, c: &CallExpr) -> u64 {
        let target = c.target.as_deref().map_or(0, |t| self.walk(t));
        let args: Vec<u64> = c.args.iter().map(|a| self.walk(a)).collect();
        match (c.func_name.as_str(), args.as_slice()) {
            ("_+_", [a, b]) => a.saturating_add(*b),
            ("_?_:_", [_, a, b]) => *a.max(b),
            _ => args.iter().copied().max().unwrap_or(0).max(target),
        }
    }
}

/// Makes every comprehension's loop condition pay for its step first.
fn add_budget(root: &mut IdedExpr) {
    let mut stack = vec![root];
    while let Some(e) = stack.pop() {
        if let Expr::Comprehension(c) = &mut e.expr {
            let cond = std::mem::take(&mut c.loop_cond);
            let charge = IdedExpr {
                id: 0,
                expr: Expr::Call(CallExpr {
                    func_name: BUDGET_FN.into(),
                    target: None,
                    args: vec![IdedExpr {
                        id: 0,
                        expr: Expr::Ident(c.accu_var.clone()),
                    }],
                }),
            };
            c.loop_cond = IdedExpr {
                id: 0,
                expr: Expr::Call(CallExpr {
                    func_name: "_&&_".into(),
                    target: None,
                    args: vec![charge, cond],
                }),
            };
        }
        match &mut e.expr {
            Expr::Call(c) => {
                stack.extend(c.target.as_deref_mut());
                stack.extend(c.args.iter_mut());
            }
            Expr::Comprehension(c) => {
                let c = &mut **c;
                stack.extend([
                    &mut c.iter_range,
                    &mut c.accu_init,
                    &mut c.loop_step,
                    &mut c.result,
                ]);
                // The condition's own sub-expressions (not the charge).
                if let Expr::Call(and) = &mut c.loop_cond.expr {
                    stack.extend(and.args.iter_mut().skip(1));
                }
            }
            Expr::List(l) => stack.extend(l.elements.iter_mut()),
            Expr::Map(m) => {
                for entry in &mut m.entries {
                    if let EntryExpr::MapEntry(me) = &mut entry.expr {
                        stack.push(&mut me.key);
                        stack.push(&mut me.value);
                    }
                }
            }
            Expr::Select(s) => stack.push(&mut s.operand),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(src: &str) -> Result<Expression, Vec<ExpressionError>> {
        Expression::compile(src, &["event"])
    }

    fn eval(src: &str, event: serde_json::Value) -> Result<Value, String> {
        let e = compile(src).unwrap_or_else(|errs| panic!("{src}: {errs:?}"));
        e.evaluate(
            "event",
            &crate::state::registry::filter::json_to_cel(&event),
        )
    }

    fn refused(src: &str) -> String {
        match compile(src) {
            Ok(_) => panic!("accepted: {}", &src[..src.len().min(80)]),
            Err(errs) => errs
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// The forms that used to overflow the stack, at the size the issue
    /// gives and at the largest the length limit allows.
    #[test]
    fn hostile_shapes_are_refused_not_crashed() {
        let plus = |n: usize| vec!["1"; n].join("+");
        let select = |n: usize| format!("event.payload{}", ".a".repeat(n));
        let parens = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
        let lists = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        for src in [
            plus(2000),
            plus(2048),
            select(2000),
            select(2040),
            parens(1500),
            parens(2047),
            "!".repeat(3000) + "true",
            "!".repeat(4092) + "true",
            "-".repeat(4000) + "1",
            lists(1000),
            lists(2047),
            "{".repeat(1000) + &"}".repeat(1000),
            format!(
                "event.payload.l.all(x, {}x > 0{})",
                "(".repeat(40),
                ")".repeat(40)
            ),
        ] {
            assert!(src.len() <= MAX_EXPRESSION_LEN, "{}", src.len());
            let msg = refused(&src);
            assert!(msg.contains("nested") || msg.contains("parts"), "{msg}");
        }
    }

    #[test]
    fn nesting_scan_skips_strings_and_points_at_the_place() {
        let inside = format!(r#"event.type == "{}""#, "(".repeat(100));
        assert!(compile(&inside).is_ok());
        let raw = format!(r#"event.type == r'\{}'"#, "[".repeat(100));
        assert!(compile(&raw).is_ok());
        let triple = format!(r#"event.type == """ab{}""""#, "!".repeat(100));
        assert!(compile(&triple).is_ok(), "{:?}", compile(&triple).err());
        let errs = compile(&format!("true &&\n {}1{}", "(".repeat(40), ")".repeat(40)))
            .err()
            .unwrap();
        assert_eq!(errs[0].position, Some((2, 1 + MAX_NESTING + 1)));
        // Subtraction chains are binary, not a unary run.
        assert!(compile(&vec!["1"; 40].join(" - ")).is_ok());
    }

    #[test]
    fn every_standard_macro_binds_its_variables() {
        let ev = serde_json::json!({
            "payload": {"readings": [10, 35, 20], "m": {"a": 1, "b": 2},
                         "rows": [{"v": [1, 2]}, {"v": [3]}]}
        });
        for (src, want) in [
            ("event.payload.readings.exists(r, r > 30)", true),
            ("event.payload.readings.all(r, r > 30)", false),
            ("event.payload.readings.exists_one(r, r > 30)", true),
            ("event.payload.readings.map(r, r * 2)[1] == 70", true),
            ("event.payload.readings.map(r, r > 15, r)[0] == 35", true),
            ("event.payload.readings.filter(r, r < 30).size() == 2", true),
            ("[1, 2].all(x, x > 0)", true),
            ("event.payload.m.exists(k, k == 'b')", true),
            ("event.payload.rows.all(row, row.v.all(x, x > 0))", true),
            (
                "event.payload.rows.exists(row, row.v.exists(x, [x].map(y, y * 2).exists(z, z == 6)))",
                true,
            ),
            ("has(event.payload.m.a)", true),
        ] {
            assert_eq!(eval(src, ev.clone()), Ok(Value::Bool(want)), "{src}");
        }
        // A macro's variable does not leak out of it.
        assert!(refused("[1].all(x, x > 0) && x == 1").contains("unknown variable(s) x"));
        assert!(refused("device == 1").contains("device"));
    }

    #[test]
    fn comprehensions_nest_at_most_three_deep() {
        let four = "[1].all(a, [1].all(b, [1].all(c, [1].all(d, d > 0))))";
        assert!(refused(four).contains("nested deeper than 3"));
    }

    #[test]
    fn a_wide_comprehension_runs_out_of_budget() {
        let list: Vec<u32> = (0..5000).collect();
        let ev = serde_json::json!({"payload": {"l": list}});
        // Linear work fits.
        assert_eq!(
            eval("event.payload.l.exists(x, x == 4999)", ev.clone()),
            Ok(Value::Bool(true))
        );
        // Quadratic work does not.
        let err = eval(
            "event.payload.l.all(x, event.payload.l.all(y, y >= 0))",
            ev.clone(),
        )
        .unwrap_err();
        assert!(err.contains("budget"), "{err}");
        // `map` copies its accumulator at every step: quadratic too.
        let err = eval("event.payload.l.map(x, x).size() > 0", ev).unwrap_err();
        assert!(err.contains("budget"), "{err}");
    }

    #[test]
    fn amplification_and_message_literals_are_refused() {
        let many = vec!["event.payload.s"; 17].join(" + ");
        assert!(refused(&many).contains("joins more than 16"));
        assert!(compile(&vec!["event.payload.s"; 16].join(" + ")).is_ok());
        assert!(refused("Foo{a: 1} == 1").contains("message literals"));
    }

    #[test]
    fn evaluator_panics_are_caught() {
        // The evaluator has a todo!() for comprehensions over a number.
        let err = eval(
            "event.payload.n.all(x, x > 0)",
            serde_json::json!({"payload": {"n": 3}}),
        )
        .unwrap_err();
        assert!(!err.is_empty());
    }

    #[test]
    fn evaluation_fits_the_eval_stack() {
        // The deepest accepted shapes evaluate on a thread with EVAL_STACK.
        let deep_select = format!("has(event{})", ".a".repeat(MAX_DEPTH - 3));
        let deep_parens = format!(
            "{}event.payload.l.all(x, [x].all(y, [y].exists(z, z >= 0))){}",
            "(".repeat(MAX_NESTING - 4),
            ")".repeat(MAX_NESTING - 4)
        );
        let chain = vec!["1"; MAX_DEPTH - 2].join("+") + " > 0";
        let exprs: Vec<Expression> = [deep_select, deep_parens, chain]
            .iter()
            .map(|s| compile(s).unwrap_or_else(|e| panic!("{s}: {e:?}")))
            .collect();
        std::thread::Builder::new()
            .stack_size(EVAL_STACK / 4)
            .spawn(move || {
                let v = crate::state::registry::filter::json_to_cel(
                    &serde_json::json!({"payload": {"l": [1, 2]}}),
                );
                for e in &exprs {
                    let _ = e.evaluate("event", &v);
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
