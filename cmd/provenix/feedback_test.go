package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testgitea"
	"codeberg.org/provenix/provenix/runner/rpc"
)

// TestFeedbackCommandsAgainstGitea drives `feedback status`,
// `feedback release-assets` and `runner register --forgejo-token` as an
// operator or a workflow would, against a real forge.
func TestFeedbackCommandsAgainstGitea(t *testing.T) {
	ctx := testctx.New(t, 2*time.Minute)
	f := testgitea.Start(t)
	owner, repo := f.CreateRepo(t, "app")
	full := owner + "/" + repo
	tokenFile := filepath.Join(t.TempDir(), "forge-token")
	if err := os.WriteFile(tokenFile, []byte(f.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sha := f.HeadSHA(t, owner, repo)
	forgeArgs := []string{"--server", f.URL, "--token-file", tokenFile, "--repo", full}

	t.Run("status", func(t *testing.T) {
		for _, st := range []string{"pending", "success"} {
			args := append([]string{"feedback", "status", "--sha", sha, "--system", "x86_64-linux", "--state", st,
				"--description", "quorum 2/2 verified", "--target-url", "https://cache.example.org/x.provenance.json"}, forgeArgs...)
			if out, errOut, code := cli(t, ctx, args...); code != exitOK {
				t.Fatalf("status %s: exit %d\n%s%s", st, code, out, errOut)
			}
		}
		comb, _, err := f.Client().GetCombinedStatus(owner, repo, sha)
		if err != nil {
			t.Fatal(err)
		}
		if comb.State != gitea.StatusSuccess || len(comb.Statuses) != 1 {
			t.Fatalf("combined %s with %d statuses", comb.State, len(comb.Statuses))
		}
		s := comb.Statuses[0]
		if s.Context != "provenix/x86_64-linux" || s.Description != "quorum 2/2 verified" || s.TargetURL != "https://cache.example.org/x.provenance.json" {
			t.Errorf("status %+v", s)
		}
		all, _, err := f.Client().ListStatuses(owner, repo, sha, gitea.ListStatusesOption{})
		if err != nil || len(all) != 2 {
			t.Errorf("%d statuses (%v), want pending and success", len(all), err)
		}

		// Usage errors never reach the forge.
		if _, errOut, code := cli(t, ctx, append([]string{"feedback", "status", "--sha", sha, "--system", "x", "--state", "warning"}, forgeArgs...)...); code != exitUsageErr || !strings.Contains(errOut, "--state") {
			t.Errorf("state warning: exit %d\n%s", code, errOut)
		}
	})

	t.Run("release assets", func(t *testing.T) {
		f.CreateRelease(t, owner, repo, "v1.0.0")
		dir := t.TempDir()
		a, b := filepath.Join(dir, "a.sigstore.json"), filepath.Join(dir, "b.sigstore.json")
		writeTestFile(t, a, "aaaa")
		writeTestFile(t, b, "bbbbbbbb")
		args := append(append([]string{"feedback", "release-assets", "--tag", "v1.0.0"}, forgeArgs...), a, b)
		out, errOut, code := cli(t, ctx, args...)
		if code != exitOK || strings.Count(out, "attached") != 2 {
			t.Fatalf("first: exit %d\n%s%s", code, out, errOut)
		}
		out, errOut, code = cli(t, ctx, args...)
		if code != exitOK || strings.Count(out, "already there") != 2 {
			t.Fatalf("second: exit %d\n%s%s", code, out, errOut)
		}
		rel, _, err := f.Client().GetReleaseByTag(owner, repo, "v1.0.0")
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int64{}
		for _, at := range rel.Attachments {
			got[at.Name] += at.Size
		}
		if len(rel.Attachments) != 2 || got["a.sigstore.json"] != 4 || got["b.sigstore.json"] != 8 {
			t.Errorf("assets %v (%d)", got, len(rel.Attachments))
		}

		_, errOut, code = cli(t, ctx, append(append([]string{"feedback", "release-assets", "--tag", "v7"}, forgeArgs...), a)...)
		if code != exitFailed || !strings.Contains(errOut, `no release for tag "v7"`) {
			t.Errorf("unknown tag: exit %d\n%s", code, errOut)
		}
	})

	t.Run("wrong token", func(t *testing.T) {
		t.Setenv(forgeTokenEnv, "0000000000000000000000000000000000000000")
		_, errOut, code := cli(t, ctx, "feedback", "status", "--server", f.URL, "--repo", full, "--sha", sha, "--system", "x", "--state", "error")
		if code != exitFailed || !strings.Contains(errOut, "refused the access token") {
			t.Errorf("wrong token: exit %d\n%s", code, errOut)
		}
		t.Setenv(forgeTokenEnv, "")
		_, errOut, code = cli(t, ctx, "feedback", "status", "--server", f.URL, "--repo", full, "--sha", sha, "--system", "x", "--state", "error")
		if code != exitUsageErr || !strings.Contains(errOut, "--token-file") {
			t.Errorf("no token: exit %d\n%s", code, errOut)
		}
	})

	t.Run("register with an access token", func(t *testing.T) {
		cfg, runnerFile := runnerConfigFile(t, "")
		out, errOut, code := cli(t, ctx, "runner", "register", "--no-interactive", "--config", cfg,
			"--instance", f.URL, "--forgejo-token", f.Token, "--scope", full, "--name", "fb-1", "--labels", "nix")
		if code != exitOK {
			t.Fatalf("register: exit %d\n%s%s", code, out, errOut)
		}
		rf, err := rpc.LoadRunnerFile(runnerFile)
		if err != nil {
			t.Fatal(err)
		}
		runners, _, err := f.Client().ListRepoActionRunners(owner, repo, gitea.ListActionRunnersOptions{})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range runners.Runners {
			found = found || (r.Name == "fb-1" && r.ID == rf.ID)
		}
		if !found {
			t.Errorf("runner fb-1 (id %d) not among the repository's runners %+v", rf.ID, runners.Runners)
		}

		// The instance scope, with the token from the environment.
		cfg2, _ := runnerConfigFile(t, "")
		t.Setenv(forgeTokenEnv, f.Token)
		if out, errOut, code := cli(t, ctx, "runner", "register", "--no-interactive", "--config", cfg2,
			"--instance", f.URL, "--name", "fb-2", "--labels", "nix"); code != exitOK {
			t.Fatalf("register (instance, env token): exit %d\n%s%s", code, out, errOut)
		}
		all, _, err := f.Client().ListAdminActionRunners(gitea.ListActionRunnersOptions{})
		if err != nil {
			t.Fatal(err)
		}
		names := []string{}
		for _, r := range all.Runners {
			names = append(names, r.Name)
		}
		if !strings.Contains(strings.Join(names, ","), "fb-2") {
			t.Errorf("instance runners %q lack fb-2", names)
		}

		t.Setenv(forgeTokenEnv, "")
		_, errOut, code = cli(t, ctx, "runner", "register", "--no-interactive", "--config", cfg2, "--force",
			"--instance", f.URL, "--forgejo-token", "0000000000000000000000000000000000000000", "--name", "fb-3", "--labels", "nix")
		if code != exitFailed || !strings.Contains(errOut, "refused the access token") {
			t.Errorf("wrong access token: exit %d\n%s", code, errOut)
		}
	})
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
