package tenant

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/queue"
)

// copyFixture copies testdata/NAME (an account.conf and the seeds made by
// `provenix tenant add acme --max-file 1GiB` of an older version) into a
// fresh tenant directory.
func copyFixture(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "acme")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("testdata", name))); err != nil {
		t.Fatal(err)
	}
	return dir
}

// serve starts a nats-server whose accounts block includes the tenant's
// account.conf in dir, and returns its URL.
func serve(t *testing.T, dir string) string {
	t.Helper()
	srvDir := t.TempDir()
	// nats-server reads an include relative to its configuration.
	rel, err := filepath.Rel(srvDir, filepath.Join(dir, FileAccount))
	if err != nil {
		t.Fatal(err)
	}
	return testnats.Start(t, srvDir, fmt.Sprintf("accounts {\n  include %q\n}\n", rel), false).URL
}

// connect connects to url as the tenant's role in dir.
func connect(t *testing.T, url, dir string, role queue.Role) *queue.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := queue.Connect(ctx, url, queue.WithNKeySeedFile(filepath.Join(dir, SeedFile(role))))
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(conn.Close)
	return conn
}

// laterRights tries two rights of later versions: a runner reads a claim
// from the farm bucket's leader (claims bound to their builders), and
// the pusher asks a farm consumer how far it delivered (requests kept
// without a claim). It returns the two errors.
func laterRights(t *testing.T, dir string) (runnerErr, pusherErr error) {
	t.Helper()
	ctx := testctx.New(t, time.Minute)
	url := serve(t, dir)
	admin := connect(t, url, dir, queue.RoleAdmin)
	if err := admin.EnsureFarm(ctx, queue.StreamOptions{}); err != nil {
		t.Fatalf("admin EnsureFarm: %v", err)
	}
	runner := connect(t, url, dir, queue.RoleRunner)
	_, _, runnerErr = runner.KVGetLatest(ctx, queue.BucketFarm, "claim.s.d.x")
	subj, err := queue.FarmBuildSubject("acme", "x86_64-linux", "none")
	if err != nil {
		t.Fatal(err)
	}
	_, pusherErr = connect(t, url, dir, queue.RolePusher).FarmRequestDelivered(ctx, subj, 1)
	return runnerErr, pusherErr
}

// TestUpgrade: account.conf files of two older versions (before the
// submitter role; before claims were bound to their builders) are
// rewritten with this version's permissions for the same users, limits
// and builder id. The old files deny a runner what this version's
// runners do; the upgraded ones allow it.
func TestUpgrade(t *testing.T) {
	for _, c := range []struct {
		fixture  string
		newSeeds []queue.Role
	}{
		{"pre-submitter", []queue.Role{queue.RoleSubmitter}},
		{"pre-claims", nil},
	} {
		t.Run(c.fixture, func(t *testing.T) {
			dir := copyFixture(t, c.fixture)
			old, _ := os.ReadFile(filepath.Join(dir, FileAccount))
			seeds := map[queue.Role][]byte{}
			for _, r := range queue.Roles {
				seeds[r], _ = os.ReadFile(filepath.Join(dir, SeedFile(r)))
			}
			// Denied at once, not timed out: the scheduler logs that
			// and goes on.
			if rerr, perr := laterRights(t, dir); !errors.Is(rerr, queue.ErrPermissionDenied) || !errors.Is(perr, queue.ErrPermissionDenied) {
				t.Fatalf("the old account.conf: a runner's leader read: %v; the pusher's consumer info: %v; want both denied", rerr, perr)
			}

			dry, err := Upgrade(UpgradeOptions{Dir: dir, DryRun: true})
			if err != nil {
				t.Fatal(err)
			}
			if !dry.Changed || dry.Backup != "" || !slices.Equal(dry.NewSeeds, c.newSeeds) {
				t.Fatalf("dry run: changed %v, backup %q, new seeds %v", dry.Changed, dry.Backup, dry.NewSeeds)
			}
			if now, _ := os.ReadFile(filepath.Join(dir, FileAccount)); !bytes.Equal(now, old) {
				t.Fatal("a dry run changed account.conf")
			}
			if _, err := os.Stat(filepath.Join(dir, SeedFile(queue.RoleSubmitter))); (err == nil) != (c.newSeeds == nil) {
				t.Fatalf("after a dry run, submitter.nk: %v", err)
			}
			var runnerAdded bool
			for _, ch := range dry.Changes {
				if ch.Role == queue.RoleRunner && slices.ContainsFunc(ch.Added, func(s string) bool { return strings.Contains(s, "KV_"+queue.BucketFarm) }) {
					runnerAdded = true
				}
			}
			if !runnerAdded {
				t.Errorf("changes %+v: want the runner's farm bucket rights among them", dry.Changes)
			}

			now := time.Date(2026, 12, 7, 1, 2, 3, 0, time.UTC)
			up, err := Upgrade(UpgradeOptions{Dir: dir, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			tn := up.Tenant
			if tn.Name != "acme" || tn.BuilderID != "acme-runner" || tn.Limits != (Limits{MaxFile: 1 << 30, MaxStreams: DefaultMaxStreams, MaxConsumers: DefaultMaxConsumers}) {
				t.Fatalf("upgraded %s, builder %s, limits %+v", tn.Name, tn.BuilderID, tn.Limits)
			}
			want, err := AccountSnippet("acme", tn.Limits, tn.Users, "acme-runner")
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(filepath.Join(dir, FileAccount)); string(got) != want {
				t.Fatalf("account.conf after the upgrade:\n%s\nwant:\n%s", got, want)
			}
			if kept, _ := os.ReadFile(up.Backup); up.Backup != filepath.Join(dir, FileAccount+".20261207T010203Z") || !bytes.Equal(kept, old) {
				t.Fatalf("backup %s does not hold the old file", up.Backup)
			}
			for r, s := range seeds {
				if got, _ := os.ReadFile(filepath.Join(dir, SeedFile(r))); len(s) > 0 && !bytes.Equal(got, s) {
					t.Errorf("%s changed", SeedFile(r))
				}
			}
			if rerr, perr := laterRights(t, dir); !errors.Is(rerr, queue.ErrNotFound) || perr != nil {
				t.Fatalf("the upgraded account.conf: a runner's leader read: %v, want not found; the pusher's consumer info: %v", rerr, perr)
			}
			connect(t, serve(t, dir), dir, queue.RoleSubmitter) // its user is in the file

			again, err := Upgrade(UpgradeOptions{Dir: dir, Now: now.Add(time.Hour)})
			if err != nil || again.Changed || again.Backup != "" || len(again.Changes) != 0 || len(again.NewSeeds) != 0 {
				t.Fatalf("second upgrade: %+v, %v", again, err)
			}
		})
	}
}

// TestUpgradeRefuses: an upgrade that would drop a user, move a runner to
// another staging scope or misread the file writes nothing.
func TestUpgradeRefuses(t *testing.T) {
	for _, c := range []struct {
		name  string
		spoil func(t *testing.T, dir string)
		opts  UpgradeOptions
	}{
		{"a user no seed names", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, SeedFile(queue.RoleAdmin))) }, UpgradeOptions{}},
		{"a seed no user has", func(t *testing.T, dir string) {
			fresh, err := Add(Options{Name: "other", Dir: filepath.Join(t.TempDir(), "other")})
			if err != nil {
				t.Fatal(err)
			}
			data, _ := os.ReadFile(fresh.Path(SeedFile(queue.RolePusher)))
			os.WriteFile(filepath.Join(dir, SeedFile(queue.RolePusher)), data, 0o600)
		}, UpgradeOptions{}},
		{"another builder id", func(*testing.T, string) {}, UpgradeOptions{BuilderID: "someone-else"}},
		{"seed files swapped", swapSeeds(queue.RolePusher, queue.RoleAdmin), UpgradeOptions{}},
		{"pusher and submitter seeds swapped", swapSeeds(queue.RolePusher, queue.RoleSubmitter), UpgradeOptions{}},
		{"one key in two seeds", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, SeedFile(queue.RoleSubmitter)))
			edit(t, dir, "    # submitter\n", "    # submitter (removed)\n")
			acct, _ := os.ReadFile(filepath.Join(dir, FileAccount))
			i := strings.Index(string(acct), "    # submitter (removed)")
			j := strings.Index(string(acct), "    # admin")
			os.WriteFile(filepath.Join(dir, FileAccount), []byte(string(acct[:i])+string(acct[j:])), 0o644)
			rb, _ := os.ReadFile(filepath.Join(dir, SeedFile(queue.RoleRunner)))
			os.WriteFile(filepath.Join(dir, SeedFile(queue.RoleSubmitter)), rb, 0o600)
		}, UpgradeOptions{}},
		{"a revoked submitter's seed", func(t *testing.T, dir string) {
			acct, _ := os.ReadFile(filepath.Join(dir, FileAccount))
			i := strings.Index(string(acct), "    # submitter")
			j := strings.Index(string(acct), "    # admin")
			os.WriteFile(filepath.Join(dir, FileAccount), []byte(string(acct[:i])+string(acct[j:])), 0o644)
			old := time.Now().Add(-time.Hour)
			os.Chtimes(filepath.Join(dir, SeedFile(queue.RoleSubmitter)), old, old)
		}, UpgradeOptions{}},
		{"a disk quota of 0", func(t *testing.T, dir string) { edit(t, dir, "max_file: 1073741824", "max_file: 0") }, UpgradeOptions{}},
		{"rights in another form", func(t *testing.T, dir string) {
			edit(t, dir, `publish: {allow: [">"]}`, `publish: [">"]`)
		}, UpgradeOptions{}},
		{"an operator's own setting", func(t *testing.T, dir string) {
			edit(t, dir, "  users: [", "  exports: [{stream: \"events.acme.>\"}]\n  users: [")
		}, UpgradeOptions{}},
		{"not an account file", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, FileAccount), []byte("listen: 4222\nport: 1\n"), 0o644)
		}, UpgradeOptions{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := copyFixture(t, "pre-claims")
			c.spoil(t, dir)
			before, _ := os.ReadDir(dir)
			acct, _ := os.ReadFile(filepath.Join(dir, FileAccount))
			c.opts.Dir = dir
			if _, err := Upgrade(c.opts); !errors.Is(err, ErrNotUpgradable) {
				t.Fatalf("upgrade: %v, want ErrNotUpgradable", err)
			}
			after, _ := os.ReadDir(dir)
			now, _ := os.ReadFile(filepath.Join(dir, FileAccount))
			if len(after) != len(before) || !bytes.Equal(now, acct) {
				t.Fatalf("a refused upgrade wrote: %d files before, %d after", len(before), len(after))
			}
		})
	}
}

// TestUpgradeFindsBuilder: a tenant whose runner has another builder id
// than NAME-runner keeps it, found through its policy.yaml or given; a
// current account.conf is left as it is.
func TestUpgradeFindsBuilder(t *testing.T) {
	tn, err := Add(Options{Name: "acme", Dir: filepath.Join(t.TempDir(), "acme"), BuilderID: "ci-box"})
	if err != nil {
		t.Fatal(err)
	}
	up, err := Upgrade(UpgradeOptions{Dir: tn.Dir})
	if err != nil || up.Tenant.BuilderID != "ci-box" || up.Changed || up.Backup != "" {
		t.Fatalf("upgrade of a current tenant: %+v, %v", up, err)
	}
	if err := os.Remove(tn.Path(FilePolicy)); err != nil {
		t.Fatal(err)
	}
	if _, err := Upgrade(UpgradeOptions{Dir: tn.Dir}); !errors.Is(err, ErrNotUpgradable) || !strings.Contains(err.Error(), "acme-runner") {
		t.Fatalf("without policy.yaml: %v, want ErrNotUpgradable naming the ids tried", err)
	}
	if up, err := Upgrade(UpgradeOptions{Dir: tn.Dir, BuilderID: "ci-box"}); err != nil || up.Changed {
		t.Fatalf("with the builder id given: %+v, %v", up, err)
	}
}

// edit replaces old by new in the account.conf in dir, once.
func edit(t *testing.T, dir, old, new string) {
	t.Helper()
	p := filepath.Join(dir, FileAccount)
	b, err := os.ReadFile(p)
	if err != nil || !strings.Contains(string(b), old) {
		t.Fatalf("%s has no %q (%v)", p, old, err)
	}
	if err := os.WriteFile(p, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeCases: an admin left out on purpose stays out; the seed an
// upgrade cut short left is taken up; an older limit is raised; a runner
// older than staging scopes takes the builder id given; a file that
// differs in layout only is current.
func TestUpgradeCases(t *testing.T) {
	t.Run("no admin", func(t *testing.T) {
		dir := copyFixture(t, "pre-claims")
		fresh, _ := Upgrade(UpgradeOptions{Dir: dir, DryRun: true})
		admin := fresh.Tenant.Users[queue.RoleAdmin]
		acct, _ := os.ReadFile(filepath.Join(dir, FileAccount))
		i := strings.Index(string(acct), "    # admin")
		j := strings.Index(string(acct), "  ]\n}")
		if i < 0 || j < i {
			t.Fatal("no admin block in the fixture")
		}
		os.WriteFile(filepath.Join(dir, FileAccount), []byte(string(acct[:i])+string(acct[j:])), 0o644)
		os.Remove(filepath.Join(dir, SeedFile(queue.RoleAdmin)))
		up, err := Upgrade(UpgradeOptions{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := up.Tenant.Users[queue.RoleAdmin]; ok || strings.Contains(up.Tenant.Snippet, admin) || strings.Contains(up.Tenant.Snippet, `">"`) {
			t.Fatalf("an admin left out came back:\n%s", up.Tenant.Snippet)
		}
		if _, err := os.Stat(filepath.Join(dir, SeedFile(queue.RoleAdmin))); err == nil {
			t.Fatal("admin.nk made again")
		}
	})
	t.Run("cut short", func(t *testing.T) {
		dir := copyFixture(t, "pre-submitter")
		seed, pub, err := newUser()
		if err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-time.Hour)
		os.Chtimes(filepath.Join(dir, FileAccount), old, old)
		os.WriteFile(filepath.Join(dir, SeedFile(queue.RoleSubmitter)), append(seed, '\n'), 0o600)
		up, err := Upgrade(UpgradeOptions{Dir: dir})
		if err != nil || up.Tenant.Users[queue.RoleSubmitter] != pub || len(up.NewSeeds) != 0 || !slices.Equal(up.TakenUp, []queue.Role{queue.RoleSubmitter}) {
			t.Fatalf("upgrade after one cut short: %+v, %v; want the seed it left taken up", up, err)
		}
	})
	t.Run("older limit", func(t *testing.T) {
		dir := copyFixture(t, "pre-claims")
		edit(t, dir, "max_streams: 12", "max_streams: 8")
		up, err := Upgrade(UpgradeOptions{Dir: dir})
		if err != nil || up.Tenant.Limits.MaxStreams != streamsNeeded || len(up.Raised) != 1 {
			t.Fatalf("upgrade with max_streams 8: %+v, %v", up, err)
		}
	})
	t.Run("unscoped staging", func(t *testing.T) {
		dir := copyFixture(t, "pre-claims")
		scoped := "$O.STAGING.C." + queue.StagingScope("acme-runner") + ".>"
		edit(t, dir, scoped, unscopedStaging)
		if _, err := Upgrade(UpgradeOptions{Dir: dir, DryRun: true}); !errors.Is(err, ErrNotUpgradable) || !strings.Contains(err.Error(), "--builder-id") {
			t.Fatalf("without a builder id: %v", err)
		}
		up, err := Upgrade(UpgradeOptions{Dir: dir, BuilderID: "box-7"})
		if err != nil || up.Tenant.BuilderID != "box-7" || !strings.Contains(up.Tenant.Snippet, queue.StagingScope("box-7")) ||
			strings.Contains(up.Tenant.Snippet, unscopedStaging) {
			t.Fatalf("with --builder-id box-7: %v\n%v", err, up)
		}
	})
	t.Run("unlimited", func(t *testing.T) {
		dir := copyFixture(t, "pre-claims")
		edit(t, dir, "max_streams: 12, max_consumers: 256", "max_streams: 0, max_consumers: 0")
		up, err := Upgrade(UpgradeOptions{Dir: dir})
		if err != nil || up.Tenant.Limits.MaxStreams != -1 || up.Tenant.Limits.MaxConsumers != -1 || len(up.Raised) != 0 {
			t.Fatalf("upgrade with 0 (unlimited) streams and consumers: %+v, %v", up, err)
		}
	})
	t.Run("layout only", func(t *testing.T) {
		tn, err := Add(Options{Name: "acme", Dir: filepath.Join(t.TempDir(), "acme")})
		if err != nil {
			t.Fatal(err)
		}
		edit(t, tn.Dir, "  users: [", "  # our comment\n  users: [")
		if up, err := Upgrade(UpgradeOptions{Dir: tn.Dir}); err != nil || up.Changed || up.Backup != "" {
			t.Fatalf("a current file with a comment: %+v, %v", up, err)
		}
	})
}

// swapSeeds swaps the seed files of roles a and b.
func swapSeeds(a, b queue.Role) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		pa, pb := filepath.Join(dir, SeedFile(a)), filepath.Join(dir, SeedFile(b))
		da, _ := os.ReadFile(pa)
		db, _ := os.ReadFile(pb)
		os.WriteFile(pa, db, 0o600)
		os.WriteFile(pb, da, 0o600)
	}
}
