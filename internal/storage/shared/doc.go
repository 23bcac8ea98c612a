// Package shared is the shared datastore as its users see it: the wire
// types of the storage server's control API, the Go client of that API
// (which implements storage.Arbiter for the leader and the agents), and the
// agent-side Datastore. The server itself, a separate program, is the
// subpackage server; both sides use the wire types here, so they cannot
// drift apart.
package shared
