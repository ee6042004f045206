// Package queue is Provenix's use of NATS JetStream: results, events and
// rebuild requests as streams, votes and waiting entries in KV buckets,
// NARs and closure exports in the staging Object Store, and the
// least-privilege permissions of each role (perms.go). The embedded
// nats-server is package queue/server, which this package does not import.
//
// Staging trusts no publisher's claims. Stage reads an existing object
// back before reusing it: the digest in an Object Store meta is whatever
// its writer said. And since the meta subject ($O.STAGING.M.<base64 key>)
// is one token that NATS permissions cannot narrow, builders stage under
// scoped keys (ScopedKey: "<key>@<digest of builder id>"), whose content
// lives under a chunk subject only that builder's runner user may publish
// to (RunnerPermissions) and which readers read without the meta. No
// runner may purge or delete staging, and the stream refuses rollups; a
// failed upload's chunks expire or go to CollectStaging, and readers take
// a key's last upload. See staging_scope.go.
package queue
