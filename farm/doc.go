// Package farm schedules build sets on workers: a set of derivations
// (a chain, a mass rebuild) submitted from anywhere is dispatched, each
// derivation once every output it needs from its inputs is visible in
// the cache, to workers able to build it, as requests on a JetStream
// work queue (FARM, one subject per tenant, system and feature class).
//
// What it holds, and where:
//   - a set's definition (its derivations, their outputs, inputs,
//     systems and features) is written once in the PROVENIX_FARM bucket
//     at submission (set.<id>, node.<id>.<hash>);
//   - each derivation's state (waiting, dispatched, done, failed,
//     blocked) is a record of its own (state.<id>.<hash>), only ever
//     changed with compare-and-set;
//   - each request's claim by a worker (claim.<id>.<hash>), also
//     compare-and-set, records which builders and owners hold its
//     replicas, so a quorum of N goes to N distinct owners.
//
// Nothing lives only in a scheduler's memory: a scheduler caches set
// definitions (they do not change), and recomputes state from the bucket
// and the cache (Resync) when it starts and at intervals. Dispatch is
// driven by the pushers' publication events. A request is published
// before the state says so, with a Nats-Msg-Id naming the set,
// derivation, replica and attempt: a scheduler that dies in between, or
// two schedulers doing the same, publish one message, and the next
// resync finishes the state change.
package farm
