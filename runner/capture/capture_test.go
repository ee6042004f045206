package capture

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidDrvs(t *testing.T) {
	ok := "/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-provenix-hello.drv"
	for _, tc := range []struct {
		name string
		drvs []string
		ok   bool
	}{
		{"one", []string{ok}, true},
		{"none", nil, false},
		{"relative", []string{"nix/store/x.drv"}, false},
		{"dotdot", []string{"/nix/store/../../root/keys/builder.drv"}, false},
		{"not drv", []string{"/nix/store/abc-hello"}, false},
		{"newline", []string{"/nix/store/a\n.drv"}, false},
		{"too many", make([]string, MaxDrvs+1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidDrvs(tc.drvs)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v", err)
			}
			if err != nil && !errors.Is(err, ErrBadRequest) {
				t.Fatalf("err %v is not ErrBadRequest", err)
			}
		})
	}
}

func TestSocketRoundTrip(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "r.sock")
	var got []string
	srv, err := Listen(sock, "tok-123", -1, -1, func(_ context.Context, drvs []string) ([]Result, error) {
		got = drvs
		if strings.Contains(drvs[0], "fail") {
			return nil, errors.New("output not built here")
		}
		return []Result{{DrvPath: drvs[0], BuilderID: "b"}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi, err)
	}
	ctx := context.Background()
	drv := "/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-x.drv"

	res, err := (&Client{Socket: sock, Token: "tok-123"}).Attest(ctx, []string{drv})
	if err != nil || len(res) != 1 || res[0].DrvPath != drv || got[0] != drv {
		t.Fatalf("attest: %v %v", res, err)
	}
	got = nil
	if _, err := (&Client{Socket: sock, Token: "wrong"}).Attest(ctx, []string{drv}); !errors.Is(err, ErrUnauthorized) || got != nil {
		t.Fatalf("wrong token: %v (handler saw %v)", err, got)
	}
	if _, err := (&Client{Socket: sock, Token: "tok-123"}).Attest(ctx, []string{"/etc/shadow"}); err == nil || got != nil {
		t.Fatalf("non-drv accepted: %v", err)
	}
	if _, err := (&Client{Socket: sock, Token: "tok-123"}).Attest(ctx, []string{"/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-fail.drv"}); err == nil || !strings.Contains(err.Error(), "not built here") {
		t.Fatalf("refusal not passed on: %v", err)
	}
}

func TestWindowsExclusive(t *testing.T) {
	base := time.Now().Add(-time.Minute).Truncate(time.Second)
	w := NewWindows(time.Hour)
	a := w.Begin(base)
	if !w.Exclusive(a, base.Add(2*time.Second)) {
		t.Fatal("a path of the only job is not exclusive")
	}
	if w.Exclusive(a, base.Add(-5*time.Second)) {
		t.Fatal("a path from before the job is attributed to it")
	}
	b := w.Begin(base.Add(10 * time.Second))
	w.End(a, base.Add(20*time.Second))
	if !w.Exclusive(a, base.Add(5*time.Second)) {
		t.Fatal("a path before the second job began should be the first job's")
	}
	if w.Exclusive(a, base.Add(15*time.Second)) || w.Exclusive(b, base.Add(15*time.Second)) {
		t.Fatal("a path registered while both ran is attributed")
	}
	w.End(b, base.Add(40*time.Second))
	if !w.Exclusive(b, base.Add(30*time.Second)) {
		t.Fatal("after the first job ended, paths are the second's")
	}
}

// TestHostWindows: two runners of one host (two Windows sharing a
// directory) each count the other's jobs: a path registered while a job
// of each ran is neither's alone (with windows of its own, each runner
// took it for its job's), one registered after the other's job ended is
// the remaining job's; a window whose runner died without ending it
// counts as running.
func TestHostWindows(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Minute).Truncate(time.Second)
	r1, err := NewHostWindows(time.Hour, dir)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := NewHostWindows(time.Hour, dir)
	if err != nil {
		t.Fatal(err)
	}
	a := r1.Begin(base)
	b := r2.Begin(base.Add(10 * time.Second))
	if r1.Exclusive(a, base.Add(15*time.Second)) || r2.Exclusive(b, base.Add(15*time.Second)) {
		t.Fatal("a path registered while a job of each runner ran is attributed")
	}
	if !r1.Exclusive(a, base.Add(5*time.Second)) {
		t.Fatal("a path registered before the other runner's job began is not the first job's")
	}
	r2.End(b, base.Add(20*time.Second))
	if !r1.Exclusive(a, base.Add(30*time.Second)) {
		t.Fatal("after the other runner's job ended, paths are not the remaining job's")
	}
	if r2.Exclusive(b, base.Add(15*time.Second)) {
		t.Fatal("an ended window still overlapping another is attributed")
	}

	// A runner that died in its job: its file has no end and nobody
	// holds it.
	dead := fmt.Sprintf("%d\n", base.Add(40*time.Second).UnixNano())
	if err := os.WriteFile(filepath.Join(dir, "win-1-dead0000-1"), []byte(dead), 0o600); err != nil {
		t.Fatal(err)
	}
	if r1.Exclusive(a, base.Add(45*time.Second)) {
		t.Fatal("a path registered after a dead runner's job began is attributed")
	}
	r1.End(a, time.Now())

	// A directory others can write is refused.
	open := t.TempDir()
	os.Chmod(open, 0o777)
	if _, err := NewHostWindows(time.Hour, open); err == nil {
		t.Fatal("a directory anyone can write accepted")
	}
}

// TestWindowsKeptWhileOverlapped: a window that ended more than keep ago
// is still counted while a job that began before it ended runs (its
// capture asks about every path since its start, however long it
// runs), on one runner and across the host's runners.
func TestWindowsKeptWhileOverlapped(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	host1, err := NewHostWindows(time.Hour, dir)
	if err != nil {
		t.Fatal(err)
	}
	host2, err := NewHostWindows(time.Hour, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		a, b *Windows
	}{{"one runner", NewWindows(time.Hour), nil}, {"two runners", host1, host2}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.b == nil {
				tc.b = tc.a
			}
			base := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
			a := tc.a.Begin(base) // a long job, still running
			b := tc.b.Begin(base.Add(10 * time.Minute))
			tc.b.End(b, base.Add(20*time.Minute))
			c := tc.b.Begin(base.Add(80 * time.Minute))
			tc.b.End(c, base.Add(91*time.Minute)) // prunes what it may
			if tc.a.Exclusive(a, base.Add(15*time.Minute)) {
				t.Fatal("a path registered while another job ran, over an hour before, is the long job's")
			}
			tc.a.End(a, time.Now())
		})
	}
}

// TestBoundSocketChecksPeer: with the right token, a peer the check
// refuses (here: this process, which is not the job's uid) is turned
// away; once closed, the socket is gone and the token worth nothing.
func TestBoundSocketChecksPeer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "r.sock")
	jobUID := os.Getuid() + 4242
	var peers []Peer
	srv, err := ListenBound(sock, "tok-bound", -1, -1, func(p Peer) error {
		peers = append(peers, p)
		if p.UID != jobUID {
			return errors.New("wrong uid")
		}
		return nil
	}, func(_ context.Context, drvs []string) ([]Result, error) {
		t.Error("attest called for a refused peer")
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	drv := "/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-x.drv"
	_, err = (&Client{Socket: sock, Token: "tok-bound"}).Attest(context.Background(), []string{drv})
	if !errors.Is(err, ErrPeer) {
		t.Fatalf("replayed token from another uid: %v, want ErrPeer", err)
	}
	if len(peers) != 1 || peers[0].UID != os.Getuid() || peers[0].PID != os.Getpid() {
		t.Fatalf("peer %+v, want uid %d pid %d", peers, os.Getuid(), os.Getpid())
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := (&Client{Socket: sock, Token: "tok-bound"}).Attest(ctx, []string{drv}); err == nil {
		t.Fatal("replay after the job ended was accepted")
	}
}
