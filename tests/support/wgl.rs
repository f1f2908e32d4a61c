//! A linearizability checker: the Wing–Gong algorithm with Lowe's memoisation.
//!
//! Sources:
//! - J. M. Wing and C. Gong, "Testing and verifying concurrent objects", Journal of
//!   Parallel and Distributed Computing 17(1–2), 1993 (the search: linearize the
//!   operations one at a time, any call whose return has not been passed may go next,
//!   backtrack on a dead end).
//! - G. Lowe, "Testing for linearizability", Concurrency and Computation: Practice and
//!   Experience 29(4), 2017 (the memoisation: a cache of (set of linearized operations,
//!   object state) pairs already explored, so no configuration is searched twice).
//! - A. Horn and D. Kroening, "Faster linearizability checking via P-compositionality",
//!   FORTE 2015, and the porcupine checker built on it (the doubly linked list of call
//!   and return entries, with "lift" and "unlift" of a linearized operation).
//!
//! A history is a list of completed operations, each with its invocation and response
//! times taken from one shared clock. The checker answers whether some total order of the
//! operations (1) respects real time: an operation that returned before another was
//! invoked comes first, and (2) is a legal sequential run of the [`Specification`]
//! yielding exactly the recorded results.
//!
//! A test-only module: no maintained crate fit (todc-utils' `WGLChecker` would have been a
//! new dev-dependency for ~200 lines).

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// The sequential specification of an object.
pub trait Specification {
    /// The object's state; hashed for the memoisation.
    type State: Clone + Eq + Hash + Debug;
    /// An operation with its arguments.
    type Operation: Debug;
    /// An operation's result.
    type Result: Debug;

    /// The state after `operation` returned `result` in `state`, or `None` when the
    /// specification cannot return `result` there.
    fn step(
        state: &Self::State,
        operation: &Self::Operation,
        result: &Self::Result,
    ) -> Option<Self::State>;
}

/// One completed operation of a history.
#[derive(Debug, Clone)]
pub struct Event<O, R> {
    /// Clock value taken just before the call.
    pub invoked_at: u64,
    /// Clock value taken just after the return (greater than `invoked_at`).
    pub returned_at: u64,
    pub operation: O,
    pub result: R,
}

/// Why a history was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No linearization exists; `linearized_max` operations of the longest linearizable
    /// prefix the search found, out of `operations`.
    NotLinearizable {
        linearized_max: usize,
        operations: usize,
        /// Where the longest linearizable prefix got stuck: the state after it, and the
        /// first calls and returns not linearized then (for the failure message).
        stuck: String,
    },
    /// The search passed `steps_max` steps without an answer.
    GaveUp { steps_max: u64 },
}

/// A fixed-size set of operation indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }
    fn insert(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }
    fn remove(&mut self, index: usize) {
        self.0[index / 64] &= !(1 << (index % 64));
    }
}

/// An entry of the doubly linked list: the call or the return of operation `operation`.
#[derive(Clone, Copy)]
struct Entry {
    operation: usize,
    is_call: bool,
    /// For a call, the index of its return entry.
    matching: usize,
}

/// The call and return entries in time order, as a doubly linked list (index `0` is the
/// head sentinel; entry `i` of `entries` is node `i + 1`).
struct List {
    entries: Vec<Entry>,
    previous: Vec<usize>,
    next: Vec<Option<usize>>,
}

impl List {
    fn new<O, R>(history: &[Event<O, R>]) -> Self {
        let mut times: Vec<(u64, usize, bool)> = Vec::with_capacity(2 * history.len());
        for (operation, event) in history.iter().enumerate() {
            assert!(
                event.invoked_at < event.returned_at,
                "event {operation} returned before its call"
            );
            times.push((event.invoked_at, operation, true));
            times.push((event.returned_at, operation, false));
        }
        times.sort_unstable();
        let mut return_node = vec![0; history.len()];
        for (index, &(_, operation, is_call)) in times.iter().enumerate() {
            if !is_call {
                return_node[operation] = index + 1;
            }
        }
        let entries = times
            .iter()
            .map(|&(_, operation, is_call)| Entry {
                operation,
                is_call,
                matching: return_node[operation],
            })
            .collect();
        let nodes = times.len() + 1;
        Self {
            entries,
            previous: (0..nodes).map(|node| node.saturating_sub(1)).collect(),
            next: (0..nodes)
                .map(|node| Some(node + 1).filter(|next| *next < nodes))
                .collect(),
        }
    }

    fn entry(&self, node: usize) -> Entry {
        self.entries[node - 1]
    }

    /// Unlinks `node`.
    fn unlink(&mut self, node: usize) {
        let previous = self.previous[node];
        let next = self.next[node];
        self.next[previous] = next;
        if let Some(next) = next {
            self.previous[next] = previous;
        }
    }

    /// Links `node` back where it was (undoes the last `unlink` of it, in reverse order).
    fn relink(&mut self, node: usize) {
        let previous = self.previous[node];
        let next = self.next[node];
        self.next[previous] = Some(node);
        if let Some(next) = next {
            self.previous[next] = node;
        }
    }

    /// Removes a linearized call and its return.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.entry(call).matching);
    }

    /// Puts a call and its return back.
    fn unlift(&mut self, call: usize) {
        self.relink(self.entry(call).matching);
        self.relink(call);
    }
}

/// Checks that `history` is linearizable with respect to `S` from `initial`, searching at
/// most `steps_max` steps.
///
/// # Errors
///
/// [`Refusal::NotLinearizable`] when no linearization exists, [`Refusal::GaveUp`] when the
/// step bound passed first.
pub fn check<S: Specification>(
    initial: S::State,
    history: &[Event<S::Operation, S::Result>],
    steps_max: u64,
) -> Result<(), Refusal> {
    let mut list = List::new(history);
    let mut linearized = BitSet::new(history.len());
    let mut cache: HashSet<(BitSet, S::State)> = HashSet::new();
    // The linearized calls, with the state before each.
    let mut calls: Vec<(usize, S::State)> = Vec::new();
    let mut state = initial;
    let mut linearized_max = 0;
    let mut stuck = String::new();
    let mut node = list.next[0];
    for _ in 0..steps_max {
        let Some(current) = node else {
            return Ok(()); // every operation linearized
        };
        let entry = list.entry(current);
        if entry.is_call {
            let event = &history[entry.operation];
            if let Some(next_state) = S::step(&state, &event.operation, &event.result) {
                let mut next_linearized = linearized.clone();
                next_linearized.insert(entry.operation);
                if cache.insert((next_linearized.clone(), next_state.clone())) {
                    calls.push((current, std::mem::replace(&mut state, next_state)));
                    linearized = next_linearized;
                    list.lift(current);
                    if calls.len() > linearized_max {
                        linearized_max = calls.len();
                        stuck = describe(&list, history, &state);
                    }
                    node = list.next[0];
                    continue;
                }
            }
            node = list.next[current];
        } else {
            // A return whose call could not be linearized: backtrack.
            let Some((call, previous_state)) = calls.pop() else {
                return Err(Refusal::NotLinearizable {
                    linearized_max,
                    operations: history.len(),
                    stuck,
                });
            };
            state = previous_state;
            linearized.remove(list.entry(call).operation);
            list.unlift(call);
            node = list.next[call];
        }
    }
    Err(Refusal::GaveUp { steps_max })
}

/// The state and the next entries of the list, for a failure message.
fn describe<O: Debug, R: Debug, T: Debug>(
    list: &List,
    history: &[Event<O, R>],
    state: &T,
) -> String {
    let mut text = format!("after state {state:?}, next:");
    let mut node = list.next[0];
    for _ in 0..16 {
        let Some(current) = node else { break };
        let entry = list.entry(current);
        let event = &history[entry.operation];
        if entry.is_call {
            text += &format!(
                "\n  call   #{} [{}..{}] {:?} -> {:?}",
                entry.operation, event.invoked_at, event.returned_at, event.operation, event.result
            );
        } else {
            text += &format!("\n  return #{}", entry.operation);
        }
        node = list.next[current];
    }
    text
}
