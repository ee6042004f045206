package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/runner/config"
	"codeberg.org/provenix/provenix/runner/rpc"
	"codeberg.org/provenix/provenix/runner/rpc/rpctest"
)

// runnerConfigFile writes a config whose runner.file is in a temporary
// directory, plus extra YAML, and returns the config and .runner paths.
func runnerConfigFile(t *testing.T, extra string) (cfg, runnerFile string) {
	t.Helper()
	dir := t.TempDir()
	runnerFile = filepath.Join(dir, ".runner")
	cfg = filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("runner:\n  file: "+runnerFile+"\n"+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg, runnerFile
}

func TestRunnerRegisterNoInteractive(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	srv := rpctest.New(t, rpctest.WithRegistrationTokens("reg-token"))
	cfg, runnerFile := runnerConfigFile(t, "")
	args := []string{"runner", "register", "--no-interactive", "--config", cfg,
		"--instance", srv.URL, "--token", "reg-token", "--name", "ci-1", "--labels", "nix, nix-x86_64-linux,kvm:host"}

	out, errOut, code := cli(t, ctx, args...)
	if code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	fi, err := os.Stat(runnerFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf(".runner mode %04o, want 0600", fi.Mode().Perm())
	}
	rf, err := rpc.LoadRunnerFile(runnerFile)
	if err != nil {
		t.Fatal(err)
	}
	runners := srv.Runners()
	if len(runners) != 1 {
		t.Fatalf("%d runners on the forge", len(runners))
	}
	r := runners[0]
	if rf.UUID != r.UUID || rf.Token != r.Token || rf.ID != r.ID || rf.Name != "ci-1" || rf.Address != srv.URL ||
		!reflect.DeepEqual(rf.Labels, []string{"nix", "nix-x86_64-linux", "kvm:host"}) {
		t.Errorf(".runner %+v does not match the forge's runner %+v", rf, r)
	}
	if !reflect.DeepEqual(r.Labels, []string{"nix", "nix-x86_64-linux", "kvm"}) || r.Version != version {
		t.Errorf("forge got labels %q version %q", r.Labels, r.Version)
	}
	if got := srv.Methods(); !reflect.DeepEqual(got, []string{rpctest.Ping, rpctest.Register}) {
		t.Errorf("RPC sequence %q", got)
	}
	if !strings.Contains(out, rf.UUID) || !strings.Contains(out, runnerFile) {
		t.Errorf("output does not say what was registered where:\n%s", out)
	}

	// Registering again must not replace the registration silently, nor
	// even reach the forge.
	_, errOut, code = cli(t, ctx, args...)
	if code != exitUsageErr || !strings.Contains(errOut, "--force") {
		t.Errorf("second register: exit %d, stderr:\n%s", code, errOut)
	}
	if n := len(srv.Calls()); n != 2 {
		t.Errorf("second register made %d calls in all, want none", n-2)
	}
	if _, _, code = cli(t, ctx, append(args, "--force")...); code != exitOK {
		t.Errorf("register --force: exit %d", code)
	}
	if again, _ := rpc.LoadRunnerFile(runnerFile); again == nil || again.UUID == rf.UUID || len(srv.Runners()) != 2 {
		t.Error("register --force did not write a new registration")
	}
}

func TestRunnerRegisterDefaultLabels(t *testing.T) {
	if err := nix.Available(); err != nil {
		t.Fatal(err)
	}
	ctx := testctx.New(t, time.Minute)
	nixCfg, err := (&nix.Nix{}).Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := config.DefaultLabels(nixCfg)
	srv := rpctest.New(t)
	cfg, runnerFile := runnerConfigFile(t, "")
	out, errOut, code := cli(t, ctx, "runner", "register", "--config", cfg, "--instance", srv.URL, "--token", rpctest.DefaultRegistrationToken)
	if code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	rf, err := rpc.LoadRunnerFile(runnerFile)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if !reflect.DeepEqual(rf.Labels, want) || rf.Name != host {
		t.Errorf("labels %q name %q, want %q and the host name %q", rf.Labels, rf.Name, want, host)
	}
}

// The config's runner.labels win over --labels, as in forgejo-runner.
func TestRunnerRegisterConfigLabels(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	srv := rpctest.New(t)
	cfg, runnerFile := runnerConfigFile(t, "  labels: [from-config]\ncontainer:\n  network: host\n")
	_, errOut, code := cli(t, ctx, "runner", "register", "--config", cfg, "--instance", srv.URL,
		"--token", rpctest.DefaultRegistrationToken, "--name", "n", "--labels", "from-flag")
	if code != exitOK {
		t.Fatalf("exit %d\n%s", code, errOut)
	}
	rf, _ := rpc.LoadRunnerFile(runnerFile)
	if rf == nil || !reflect.DeepEqual(rf.Labels, []string{"from-config"}) {
		t.Errorf("labels %v", rf)
	}
	for _, w := range []string{"--labels is ignored", `section \"container\" is ignored`} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
}

func TestRunnerRegisterInteractive(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	srv := rpctest.New(t)
	cfgPath, runnerFile := runnerConfigFile(t, "")
	if err := os.WriteFile(runnerFile, []byte(`{"uuid":"old","token":"t","address":"http://old"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	// Answers: replace? instance (first not a URL), token, name (default
	// refused as empty is impossible: take "box"), labels (a docker one
	// first).
	answers := "y\nforgejo.example\n" + srv.URL + "\n" + rpctest.DefaultRegistrationToken + "\nbox\nubuntu:docker://node\nnix,kvm\n"
	var prompts, out bytes.Buffer
	g := &globals{logLevel: "error", stdin: strings.NewReader(answers), stdout: &out, stderr: &prompts}
	if err := runRegister(ctx, g, registerFlags{config: cfgPath, labels: "nix"}, true); err != nil {
		t.Fatalf("%v\nprompts:\n%s", err, prompts.String())
	}
	rf, err := rpc.LoadRunnerFile(runnerFile)
	if err != nil {
		t.Fatal(err)
	}
	// --labels was given, so labels were not asked for.
	if rf.Name != "box" || !reflect.DeepEqual(rf.Labels, []string{"nix"}) || rf.Address != srv.URL {
		t.Errorf("registered %+v", rf)
	}
	for _, p := range []string{"replace it?", "Forge instance URL", "want http(s)://", "Registration token", "Runner name ["} {
		if !strings.Contains(prompts.String(), p) {
			t.Errorf("prompts lack %q:\n%s", p, prompts.String())
		}
	}
}

func TestRunnerRegisterFails(t *testing.T) {
	srv := rpctest.New(t)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{name: "no token without a terminal", args: []string{"--instance", srv.URL}, wantCode: exitUsageErr, wantErr: "--instance and --token are required"},
		{name: "docker label", args: []string{"--instance", srv.URL, "--token", rpctest.DefaultRegistrationToken, "--labels", "ubuntu-latest:docker://node:20"}, wantCode: exitUsageErr, wantErr: "natively with Nix"},
		{name: "bad instance", args: []string{"--instance", "forgejo.example.org", "--token", "x", "--labels", "nix"}, wantCode: exitUsageErr, wantErr: "http(s)://"},
		{name: "wrong token", args: []string{"--instance", srv.URL, "--token", "wrong", "--labels", "nix"}, wantCode: exitFailed, wantErr: "registration token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, runnerFile := runnerConfigFile(t, "")
			args := append([]string{"runner", "register", "--no-interactive", "--config", cfg, "--name", "n"}, tt.args...)
			_, errOut, code := cli(t, testctx.New(t, time.Minute), args...)
			if code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("exit %d, want %d; stderr (want %q):\n%s", code, tt.wantCode, tt.wantErr, errOut)
			}
			if _, err := os.Stat(runnerFile); !os.IsNotExist(err) {
				t.Errorf(".runner written: %v", err)
			}
		})
	}
}

func TestRunnerCreateRunnerFile(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	srv := rpctest.New(t)
	const secret = "7c31591e8b67225a116d4a4519ea8e507e08f71f"
	cfg, runnerFile := runnerConfigFile(t, "")
	args := []string{"runner", "create-runner-file", "--config", cfg, "--instance", srv.URL, "--secret", secret, "--name", "offline", "--labels", "nix", "--connect"}

	// The forge does not know the secret yet: --connect fails, no file.
	_, errOut, code := cli(t, ctx, args...)
	if code != exitFailed || !strings.Contains(errOut, "forgejo-cli actions register") {
		t.Errorf("unknown secret: exit %d\n%s", code, errOut)
	}
	if _, err := os.Stat(runnerFile); !os.IsNotExist(err) {
		t.Fatalf(".runner written for a secret the forge refused: %v", err)
	}

	if _, err := srv.RegisterSecret("offline", secret); err != nil {
		t.Fatal(err)
	}
	before := len(srv.Calls())
	if out, errOut, code := cli(t, ctx, args...); code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	rf, err := rpc.LoadRunnerFile(runnerFile)
	if err != nil {
		t.Fatal(err)
	}
	if rf.UUID != "37633331-3539-3165-3862-363732323561" || rf.Token != secret || rf.Name != "offline" {
		t.Errorf(".runner %+v", rf)
	}
	if got := srv.Methods()[before:]; !reflect.DeepEqual(got, []string{rpctest.Ping, rpctest.Declare}) {
		t.Errorf("RPC sequence %q", got)
	}
	declare := srv.CallsTo(rpctest.Declare)
	if req := declare[len(declare)-1].Request.(*runnerv1.DeclareRequest); !reflect.DeepEqual(req.GetLabels(), []string{"nix"}) {
		t.Errorf("declared labels %q", req.GetLabels())
	}

	// Offline (no --connect): nothing is sent. The same secret again is
	// fine; another one needs --force.
	before = len(srv.Calls())
	if _, errOut, code := cli(t, ctx, args[:len(args)-1]...); code != exitOK {
		t.Errorf("same secret again: exit %d\n%s", code, errOut)
	}
	other := strings.Repeat("a", 40)
	if _, errOut, code := cli(t, ctx, "runner", "create-runner-file", "--config", cfg, "--instance", srv.URL, "--secret", other, "--labels", "nix"); code != exitUsageErr || !strings.Contains(errOut, "--force") {
		t.Errorf("other secret: exit %d\n%s", code, errOut)
	}
	if len(srv.Calls()) != before {
		t.Error("create-runner-file without --connect contacted the forge")
	}
	if _, errOut, code := cli(t, ctx, "runner", "create-runner-file", "--config", cfg, "--instance", srv.URL, "--secret", "abc", "--labels", "nix"); code != exitUsageErr || !strings.Contains(errOut, "40 hexadecimal") {
		t.Errorf("short secret: exit %d\n%s", code, errOut)
	}
}

func TestRunnerGenerateConfig(t *testing.T) {
	out, errOut, code := cli(t, testctx.New(t, time.Minute), "runner", "generate-config")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	c, err := config.Parse([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, config.Default()) {
		t.Errorf("generated config loads as %+v, not the defaults", c)
	}
}

// Every flag of the runner's commands is explained in --help.
func TestRunnerHelp(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"register":           {"--config", "--instance", "--token", "--name", "--labels", "--no-interactive", "--force", "--ephemeral"},
		"create-runner-file": {"--config", "--instance", "--secret", "--name", "--labels", "--connect", "--force"},
	} {
		out, _, code := cli(t, testctx.New(t, time.Minute), "runner", cmd, "--help")
		if code != exitOK {
			t.Fatalf("%s --help: exit %d", cmd, code)
		}
		for _, f := range flags {
			if !strings.Contains(out, f) {
				t.Errorf("%s --help does not mention %s", cmd, f)
			}
		}
	}
}

// --connection writes server.connections.NAME into the config, once per
// forge, keeping the file's other content and never writing .runner.
func TestRunnerRegisterConnection(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	srvA := rpctest.New(t)
	srvB := rpctest.New(t)
	cfg, runnerFile := runnerConfigFile(t, "  labels: [nix]\n# the operator's comment\nprovenix:\n  tenant: acme\n")
	register := func(srv *rpctest.Server, name string, extra ...string) (string, string, int) {
		args := append([]string{"runner", "register", "--no-interactive", "--config", cfg, "--instance", srv.URL,
			"--token", rpctest.DefaultRegistrationToken, "--name", "box", "--connection", name}, extra...)
		return cli(t, ctx, args...)
	}
	for _, r := range []struct {
		srv  *rpctest.Server
		name string
	}{{srvA, "a"}, {srvB, "b"}} {
		out, errOut, code := register(r.srv, r.name)
		if code != exitOK {
			t.Fatalf("register %s: exit %d\n%s%s", r.name, code, out, errOut)
		}
		if !strings.Contains(out, "server.connections."+r.name) {
			t.Errorf("output does not say where the registration went:\n%s", out)
		}
	}
	if _, err := os.Stat(runnerFile); !os.IsNotExist(err) {
		t.Errorf(".runner written: %v", err)
	}
	fi, err := os.Stat(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("config mode %04o, want 0600", fi.Mode().Perm())
	}
	data, _ := os.ReadFile(cfg)
	if !strings.Contains(string(data), "# the operator's comment") {
		t.Errorf("the config lost its comment:\n%s", data)
	}
	c, err := config.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.Provenix.Tenant != "acme" || c.Runner.File != runnerFile {
		t.Errorf("the config's other content changed: %+v", c)
	}
	conns, err := rpc.Connections(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 2 {
		t.Fatalf("connections %+v", conns)
	}
	for i, srv := range []*rpctest.Server{srvA, srvB} {
		runners := srv.Runners()
		if len(runners) != 1 {
			t.Fatalf("%d runners on forge %d", len(runners), i)
		}
		got, r := conns[i], runners[0]
		if got.URL != srv.URL || got.UUID != r.UUID || got.Token != r.Token || !reflect.DeepEqual(got.Labels, []string{"nix"}) {
			t.Errorf("connection %+v does not match forge %d's runner %+v", got, i, r)
		}
	}

	// Registering a name again needs --force, and then replaces only it.
	calls := len(srvA.Calls())
	if _, errOut, code := register(srvA, "a"); code != exitUsageErr || !strings.Contains(errOut, "--force") || !strings.Contains(errOut, "server.connections.a") {
		t.Errorf("second register: exit %d, stderr:\n%s", code, errOut)
	}
	if n := len(srvA.Calls()); n != calls {
		t.Errorf("second register made %d calls, want none", n-calls)
	}
	if _, errOut, code := register(srvA, "a", "--force"); code != exitOK {
		t.Fatalf("register --force: exit %d\n%s", code, errOut)
	}
	c, err = config.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Server.Connections["a"].UUID; got == conns[0].UUID || len(srvA.Runners()) != 2 {
		t.Errorf("--force kept uuid %s", got)
	}
	if got := c.Server.Connections["b"]; got.UUID != conns[1].UUID {
		t.Errorf("--force on a changed b: %+v", got)
	}

	// Without a config file there is nowhere to write the connection.
	if _, errOut, code := cli(t, ctx, "runner", "register", "--no-interactive", "--instance", srvA.URL,
		"--token", rpctest.DefaultRegistrationToken, "--connection", "x"); code != exitUsageErr || !strings.Contains(errOut, "--connection needs --config") {
		t.Errorf("no --config: exit %d, stderr:\n%s", code, errOut)
	}
}
