// Package testqueue runs an embedded NATS server (queue/server) with the
// Provenix streams in place and a connection to it, for the tests of
// packages above queue. It is not part of internal/testnats: queue's own
// tests use testnats, and this package imports queue.
package testqueue

import (
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
)

// startTimeout bounds connecting and creating the streams.
const startTimeout = 30 * time.Second

// Embedded starts an embedded NATS server from cfg until the test ends,
// as testnats.Embedded does, connects to it and creates the streams with
// default StreamOptions. It fails the test, never skips, when any step
// fails. The connection is closed, and the server shut down, when the
// test ends.
func Embedded(t testing.TB, cfg natsserver.Config) (*natsserver.Server, *queue.Conn) {
	t.Helper()
	s := testnats.Embedded(t, cfg)
	ctx := testctx.New(t, startTimeout)
	c, err := queue.Connect(ctx, s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.EnsureStreams(ctx, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return s, c
}

// LastResult is the last result published on tenant's results subject
// for system when it is drv's, else nil: a test waiting for one build's
// result polls it.
func LastResult(t testing.TB, conn *queue.Conn, tenant, system, drv string) *queue.Result {
	t.Helper()
	ctx := testctx.New(t, startTimeout)
	s, err := conn.JetStream().Stream(ctx, queue.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	subj, err := queue.ResultsSubject(tenant, system)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, subj)
	if err != nil {
		return nil // none yet
	}
	r, err := queue.DecodeResult(m.Data)
	if err != nil || r.DrvPath != drv {
		return nil
	}
	return r
}

// Results reads every result on conn's RESULTS stream, in stream order.
func Results(t testing.TB, conn *queue.Conn) []*queue.Result {
	t.Helper()
	ctx := testctx.New(t, startTimeout)
	s, err := conn.JetStream().Stream(ctx, queue.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*queue.Result
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		r, err := queue.DecodeResult(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}
