package forgeapi_test

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"

	"codeberg.org/provenix/provenix/forgeapi"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testgitea"
)

// TestFeedbackAgainstGitea runs every feature against one real forge, as
// starting one takes most of the time.
func TestFeedbackAgainstGitea(t *testing.T) {
	f := testgitea.Start(t)
	ctx := testctx.New(t, 2*time.Minute)
	owner, repo := f.CreateRepo(t, "feedback")
	c, err := forgeapi.New(ctx, f.URL, f.Token)
	if err != nil {
		t.Fatal(err)
	}
	if c.IsForgejo() {
		t.Errorf("Gitea %s taken for Forgejo", c.Version())
	}

	t.Run("status", func(t *testing.T) {
		sha := f.HeadSHA(t, owner, repo)
		const target = "https://cache.example.org/abc.provenance.json"
		if err := c.SetStatus(ctx, owner, repo, sha, forgeapi.Status{
			System: "x86_64-linux", State: forgeapi.StatePending, Description: "building",
		}); err != nil {
			t.Fatal(err)
		}
		long := "quorum 2/2 verified " + strings.Repeat("é", 200)
		if err := c.SetStatus(ctx, owner, repo, sha, forgeapi.Status{
			System: "x86_64-linux", State: forgeapi.StateSuccess, Description: long, TargetURL: target,
		}); err != nil {
			t.Fatal(err)
		}
		sts, _, err := f.Client().ListStatuses(owner, repo, sha, gitea.ListStatusesOption{})
		if err != nil {
			t.Fatal(err)
		}
		var states []string
		for _, s := range sts {
			if s.Context != "provenix/x86_64-linux" {
				t.Errorf("status context %q", s.Context)
			}
			states = append(states, string(s.State))
		}
		sort.Strings(states)
		if strings.Join(states, ",") != "pending,success" {
			t.Errorf("statuses %q, want pending and success", states)
		}
		comb, _, err := f.Client().GetCombinedStatus(owner, repo, sha)
		if err != nil {
			t.Fatal(err)
		}
		if comb.State != gitea.StatusSuccess || len(comb.Statuses) != 1 {
			t.Fatalf("combined status %s with %d statuses", comb.State, len(comb.Statuses))
		}
		s := comb.Statuses[0]
		if s.TargetURL != target || !strings.HasPrefix(s.Description, "quorum 2/2 verified") ||
			len([]rune(s.Description)) != forgeapi.MaxDescription || !strings.HasSuffix(s.Description, "…") {
			t.Errorf("status %+v", s)
		}
		cur, ok, err := c.CurrentStatus(ctx, owner, repo, sha, "x86_64-linux")
		if err != nil || !ok || cur.State != forgeapi.StateSuccess || cur.Description != s.Description || cur.TargetURL != target {
			t.Errorf("current status %+v %v %v", cur, ok, err)
		}
		if _, ok, err := c.CurrentStatus(ctx, owner, repo, sha, "aarch64-linux"); ok || err != nil {
			t.Errorf("a status of another system: %v %v", ok, err)
		}
	})

	t.Run("release assets", func(t *testing.T) {
		f.CreateRelease(t, owner, repo, "v1.0.0")
		dir := t.TempDir()
		a := filepath.Join(dir, "hello.sigstore.json")
		b := filepath.Join(dir, "hello.provenance.json")
		writeFile(t, a, `{"bundle":1}`)
		writeFile(t, b, `{"provenance":"longer content"}`)
		got, err := c.AttachBundles(ctx, owner, repo, "v1.0.0", []string{a, b})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || !got[0].Uploaded || !got[1].Uploaded {
			t.Fatalf("first attach: %+v", got)
		}
		again, err := c.AttachBundles(ctx, owner, repo, "v1.0.0", []string{a, b})
		if err != nil {
			t.Fatal(err)
		}
		if len(again) != 2 || again[0].Uploaded || again[1].Uploaded {
			t.Errorf("second attach uploaded: %+v", again)
		}
		rel, _, err := f.Client().GetReleaseByTag(owner, repo, "v1.0.0")
		if err != nil {
			t.Fatal(err)
		}
		sizes := map[string]int64{}
		for _, at := range rel.Attachments {
			if _, dup := sizes[at.Name]; dup {
				t.Errorf("asset %s twice", at.Name)
			}
			sizes[at.Name] = at.Size
		}
		want := map[string]int64{"hello.sigstore.json": 12, "hello.provenance.json": 31}
		if len(sizes) != len(want) || sizes["hello.sigstore.json"] != 12 || sizes["hello.provenance.json"] != 31 {
			t.Errorf("assets %v, want %v", sizes, want)
		}

		// Same name, other content: refused, not replaced.
		writeFile(t, a, `{"bundle":"changed"}`)
		if _, err := c.AttachBundles(ctx, owner, repo, "v1.0.0", []string{a}); !errors.Is(err, forgeapi.ErrAssetConflict) {
			t.Errorf("changed asset: %v, want ErrAssetConflict", err)
		}
	})

	t.Run("unknown tag", func(t *testing.T) {
		f.CreateTag(t, owner, repo, "v0.9.0") // a tag without a release
		file := filepath.Join(t.TempDir(), "x.json")
		writeFile(t, file, "{}")
		for _, tag := range []string{"v9.9.9", "v0.9.0"} {
			_, err := c.AttachBundles(ctx, owner, repo, tag, []string{file})
			if !errors.Is(err, forgeapi.ErrNoRelease) || !errors.Is(err, forgeapi.ErrNotFound) || !strings.Contains(err.Error(), tag) {
				t.Errorf("tag %s: %v, want ErrNoRelease naming the tag", tag, err)
			}
			t.Logf("tag %s: %v", tag, err)
		}
	})

	t.Run("registration tokens", func(t *testing.T) {
		inst, err := c.RegistrationToken(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		rt, err := c.RegistrationToken(ctx, owner+"/"+repo)
		if err != nil {
			t.Fatal(err)
		}
		if inst == "" || rt == "" || inst == rt {
			t.Errorf("instance token %q, repository token %q", inst, rt)
		}
		_, err = c.RegistrationToken(ctx, owner+"/no-such-repo")
		if !errors.Is(err, forgeapi.ErrNotFound) {
			t.Errorf("unknown repository: %v, want ErrNotFound", err)
		}
		t.Logf("unknown repository: %v", err)
	})

	t.Run("wrong token", func(t *testing.T) {
		bad, err := forgeapi.New(ctx, f.URL, "0123456789abcdef0123456789abcdef01234567")
		if err == nil {
			err = bad.SetStatus(ctx, owner, repo, f.HeadSHA(t, owner, repo), forgeapi.Status{System: "x", State: forgeapi.StateError})
		}
		if !errors.Is(err, forgeapi.ErrUnauthorized) {
			t.Errorf("wrong token: %v, want ErrUnauthorized", err)
		}
		t.Logf("wrong token: %v", err)
		if err != nil && strings.Contains(err.Error(), "0123456789abcdef") {
			t.Errorf("the error shows the token: %v", err)
		}
	})
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"disputed: 2 NARs", 16, "disputed: 2 NARs"},
		{"disputed: 2 NARs!", 16, "disputed: 2 NAR…"},
		{"ééééé", 3, "éé…"},
	} {
		if got := forgeapi.Truncate(tc.in, tc.n); got != tc.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func TestInvalid(t *testing.T) {
	ctx := testctx.New(t, 2*time.Minute)
	if _, err := forgeapi.New(ctx, "ftp://x", "t"); !errors.Is(err, forgeapi.ErrInvalid) {
		t.Errorf("ftp URL: %v", err)
	}
	if _, err := forgeapi.New(ctx, "https://x.invalid", " "); !errors.Is(err, forgeapi.ErrInvalid) {
		t.Errorf("empty token: %v", err)
	}
	if _, err := forgeapi.ParseState("warning"); !errors.Is(err, forgeapi.ErrInvalid) {
		t.Errorf("state warning: %v", err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
