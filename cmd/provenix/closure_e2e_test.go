//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

// TestClosureSurvivesKill: a chain of results published dependents first
// waits in `provenix up`; a kill -9 loses none of the waiting entries (and
// `provenix status` names what each waits for); the bottom of the chain
// arrives, `up` is killed again as soon as it is visible (in the middle
// of the releases), and the restarted `up` publishes the whole chain, each
// path only after its reference.
func TestClosureSurvivesKill(t *testing.T) {
	const n = 30
	ctx := testctx.New(t, 3*time.Minute)
	p := up.Paths{Dir: filepath.Join(t.TempDir(), "data")}
	if _, err := up.Init(p); err != nil {
		t.Fatal(err)
	}
	signer, err := attest.LoadSigner(p.BuilderKey())
	if err != nil {
		t.Fatal(err)
	}
	uniq := uniqueMessage(t)
	rs := make([]*queue.Result, n)
	nars := make([][]byte, n)
	paths := make([]string, n)
	for i := range n {
		name := fmt.Sprintf("chain-%02d-%s", i, strings.ReplaceAll(uniq, "/", "-"))
		paths[i] = synthStorePath(name)
		var refs []string
		if i > 0 {
			refs = []string{paths[i-1], paths[i]}
		}
		if rs[i], nars[i], err = synthesizeRefs(ctx, signer, name, []byte(name+"\n"), refs); err != nil {
			t.Fatal(err)
		}
	}
	u := &upProcess{t: t, p: p, natsAddr: fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t)), cache: fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))}
	t.Cleanup(func() {
		if u.cmd != nil {
			_ = u.cmd.Process.Kill()
			<-u.done
		}
	})
	connect := func() *queue.Conn {
		t.Helper()
		tok, _ := os.ReadFile(p.NATSToken())
		c, err := queue.Connect(ctx, "nats://"+u.natsAddr, queue.WithToken(strings.TrimSpace(string(tok))))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	waiting := func(c *queue.Conn) int {
		t.Helper()
		ws, err := cachepush.ListWaiting(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		return len(ws)
	}
	u.start()
	conn := connect()
	for i := n - 1; i >= 1; i-- {
		if err := stageSynth(ctx, conn, rs[i], nars[i]); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.PublishResult(ctx, rs[i]); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for waiting(conn) < n-1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d entries waiting after 60s:\n%s", waiting(conn), n-1, u.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn.Close()
	u.kill()
	if c := countNarinfos(p.Cache()); c != 0 {
		t.Fatalf("%d narinfos visible without their references", c)
	}

	u.start()
	conn = connect()
	defer func() { conn.Close() }()
	if w := waiting(conn); w != n-1 {
		t.Fatalf("after kill -9: %d entries waiting, want %d", w, n-1)
	}
	out, errOut, code := cli(t, ctx, "--data-dir", p.Dir, "status", paths[1])
	if code != 0 || !strings.Contains(out, "waiting for: "+paths[0]) {
		t.Fatalf("status %s: exit %d\n%s%s", paths[1], code, out, errOut)
	}
	out, _, code = cli(t, ctx, "--data-dir", p.Dir, "up", "--status")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("waiting       %d path(s)", n-1)) {
		t.Fatalf("up --status: exit %d\n%s", code, out)
	}

	// The bottom arrives; kill as soon as it is visible, mid-release.
	if err := stageSynth(ctx, conn, rs[0], nars[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.PublishResult(ctx, rs[0]); err != nil {
		t.Fatal(err)
	}
	bottom := filepath.Join(p.Cache(), cachelayout.NarinfoKey(paths[0]))
	deadline = time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(bottom); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bottom of the chain never visible:\n%s", u.log.String())
		}
		time.Sleep(time.Millisecond)
	}
	conn.Close()
	u.kill()
	visibleAtKill := countNarinfos(p.Cache())
	checkChain(t, p.Cache(), paths)

	u.start()
	conn = connect()
	deadline = time.Now().Add(60 * time.Second)
	for countNarinfos(p.Cache()) < n || waiting(conn) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d visible, %d waiting, 60s after the restart:\n%s", countNarinfos(p.Cache()), n, waiting(conn), u.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	checkChain(t, p.Cache(), paths)
	t.Logf("%d of %d visible when killed mid-release; all %d after the restart", visibleAtKill, n, n)
	if err := u.stop(); err != nil {
		t.Fatal(err)
	}
}

// checkChain fails if a narinfo of the chain is visible while the one
// before it is not, and checks each visible one was published in order
// (its modification time not before its reference's).
func checkChain(t *testing.T, dir string, paths []string) {
	t.Helper()
	var prev os.FileInfo
	for i, sp := range paths {
		fi, err := os.Stat(filepath.Join(dir, cachelayout.NarinfoKey(sp)))
		if err != nil {
			prev = nil
			continue
		}
		if i > 0 && prev == nil {
			t.Fatalf("%s visible, its reference %s not", sp, paths[i-1])
		}
		// A narinfo's mtime is when its content was written, and an entry
		// made visible twice at once (its redelivered result and the
		// restart's resync) is replaced by an equal one written later:
		// an older mtime on a dependent is reported, not failed. What a
		// crash may not break is checked above: nothing visible without
		// its reference.
		if prev != nil && fi.ModTime().Before(prev.ModTime()) {
			t.Logf("%s's narinfo was written before its reference %s's (rewritten since?)", sp, paths[i-1])
		}
		prev = fi
	}
}

// TestClosureUpstreamE2E: two `provenix up` stacks; the second's policy
// declares the first as upstream with its key. A path whose dependency is
// only in the first cache is published by the second; a stack without the
// declaration keeps it waiting.
func TestClosureUpstreamE2E(t *testing.T) {
	ctx := testctx.New(t, 2*time.Minute)
	upstream := startStack(t, up.Config{DataDir: t.TempDir()})
	uniq := strings.ReplaceAll(uniqueMessage(t), "/", "-")
	publish := func(s *up.Stack, name string, refs []string) string {
		t.Helper()
		signer, err := attest.LoadSigner(s.Paths().BuilderKey())
		if err != nil {
			t.Fatal(err)
		}
		r, nar, err := synthesizeRefs(ctx, signer, name, []byte(name), refs)
		if err != nil {
			t.Fatal(err)
		}
		if err := stageSynth(ctx, s.Conn(), r, nar); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Conn().PublishResult(ctx, r); err != nil {
			t.Fatal(err)
		}
		return r.Outputs[0].Path
	}
	dep := publish(upstream, "updep-"+uniq, nil)
	waitNarinfo(t, upstream.CacheURL(), dep)

	downstream := func(declare bool) *up.Stack {
		dir := t.TempDir()
		p := up.Paths{Dir: dir}
		if _, err := up.Init(p); err != nil {
			t.Fatal(err)
		}
		if declare {
			pol, err := os.ReadFile(p.Policy())
			if err != nil {
				t.Fatal(err)
			}
			pol = append(pol, fmt.Sprintf("upstreams:\n  - url: %s\n    public_keys: [%q]\n", upstream.CacheURL(), readPub(t, upstream.Paths().CachePub()))...)
			if err := os.WriteFile(p.Policy(), pol, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return startStack(t, up.Config{DataDir: dir})
	}
	t.Run("declared", func(t *testing.T) {
		s := downstream(true)
		top := publish(s, "down-"+uniq, []string{dep})
		waitNarinfo(t, s.CacheURL(), top)
	})
	t.Run("not declared", func(t *testing.T) {
		s := downstream(false)
		top := publish(s, "down-"+uniq, []string{dep})
		deadline := time.Now().Add(30 * time.Second)
		for {
			w, err := cachepush.GetWaiting(ctx, s.Conn(), up.DefaultTenant, top)
			if err == nil {
				if len(w.Missing) != 1 || w.Missing[0] != dep {
					t.Fatalf("waits for %v, want %s", w.Missing, dep)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no waiting entry for %s: %v", top, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := s.Store().Stat(ctx, cachelayout.NarinfoKey(top)); err == nil {
			t.Fatal("published without its dependency nor a declared upstream")
		}
	})
}
