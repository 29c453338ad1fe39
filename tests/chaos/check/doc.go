// Package check holds the history checkers of the chaos suite: a
// linearizability model of tokend's shared/exclusive byte-range tokens for
// github.com/anishathalye/porcupine (invariants 1 and 2 of docs/ARCHITECTURE.md, one
// partition per token), and a fenced register, the test resource that
// refuses accesses with a fence below the highest it has seen, with the
// lost-update check of Jepsen's lock-set workload.
//
// The package records and judges; it starts nothing. Scenarios in package
// chaos feed it what their clients saw.
package check
