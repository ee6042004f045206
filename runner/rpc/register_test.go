package rpc

import (
	"errors"
	"reflect"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/runner/config"
	"codeberg.org/provenix/provenix/runner/rpc/rpctest"
)

func TestRegister(t *testing.T) {
	srv := rpctest.New(t, rpctest.WithRegistrationTokens("reg-token"))
	f, err := Register(testctx.New(t, 30*time.Second), RegisterOptions{
		Instance:      srv.URL,
		Token:         "reg-token",
		Name:          "builder-1",
		Labels:        []string{"nix:host", "nix-x86_64-linux", "kvm", "nix"},
		Ephemeral:     true,
		ClientOptions: []Option{WithVersion("1.2.3"), WithRetry(fastRetry)},
	})
	if err != nil {
		t.Fatal(err)
	}

	if got, want := srv.Methods(), []string{rpctest.Ping, rpctest.Register}; !reflect.DeepEqual(got, want) {
		t.Fatalf("RPC sequence %q, want %q", got, want)
	}
	calls := srv.Calls()
	if ping := calls[0].Request.(interface{ GetData() string }); ping.GetData() != "builder-1" {
		t.Errorf("Ping data %q, want the runner name", ping.GetData())
	}
	reg := calls[1].Request.(*runnerv1.RegisterRequest)
	names := []string{"nix", "nix-x86_64-linux", "kvm"}
	if reg.GetName() != "builder-1" || reg.GetToken() != "reg-token" || reg.GetVersion() != "1.2.3" || !reg.GetEphemeral() ||
		!reflect.DeepEqual(reg.GetLabels(), names) || !reflect.DeepEqual(reg.GetAgentLabels(), names) {
		t.Errorf("RegisterRequest %v, want name, token, version, ephemeral and label names %q", reg, names)
	}
	for _, c := range calls {
		if c.UUID != "" || c.Token != "" {
			t.Errorf("%s sent credentials", c.Method)
		}
	}

	runners := srv.Runners()
	if len(runners) != 1 {
		t.Fatalf("%d runners on the forge", len(runners))
	}
	r := runners[0]
	want := &RunnerFile{
		Warning: RunnerFileWarning,
		ID:      r.ID,
		UUID:    r.UUID,
		Name:    "builder-1",
		Token:   r.Token,
		Address: srv.URL,
		Labels:  []string{"nix:host", "nix-x86_64-linux", "kvm"},
	}
	if !reflect.DeepEqual(f, want) {
		t.Errorf("runner file %+v, want %+v", f, want)
	}
	if !r.Ephemeral || !reflect.DeepEqual(r.Labels, names) {
		t.Errorf("runner on the forge %+v", r)
	}
}

func TestRegisterFails(t *testing.T) {
	tests := []struct {
		name      string
		opts      RegisterOptions
		inject    func(*rpctest.Server)
		wantErr   error
		wantCalls []string
	}{
		{name: "wrong token", opts: RegisterOptions{Token: "nope", Name: "n"}, wantErr: ErrRegistrationToken, wantCalls: []string{rpctest.Ping, rpctest.Register}},
		{name: "docker label", opts: RegisterOptions{Token: rpctest.DefaultRegistrationToken, Name: "n", Labels: []string{"ubuntu:docker://node:20"}}, wantErr: config.ErrContainerLabel},
		{name: "no name", opts: RegisterOptions{Token: rpctest.DefaultRegistrationToken}},
		{name: "forge down", opts: RegisterOptions{Token: rpctest.DefaultRegistrationToken, Name: "n"},
			inject:    func(s *rpctest.Server) { s.FailNext(rpctest.Ping, connect.CodeUnavailable, 100) },
			wantErr:   ErrUnavailable,
			wantCalls: []string{rpctest.Ping, rpctest.Ping, rpctest.Ping, rpctest.Ping}},
		{name: "register never retried", opts: RegisterOptions{Token: rpctest.DefaultRegistrationToken, Name: "n"},
			inject:    func(s *rpctest.Server) { s.FailNext(rpctest.Register, connect.CodeUnavailable, 1) },
			wantErr:   ErrUnavailable,
			wantCalls: []string{rpctest.Ping, rpctest.Register}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := rpctest.New(t)
			if tt.inject != nil {
				tt.inject(srv)
			}
			tt.opts.Instance = srv.URL
			tt.opts.ClientOptions = []Option{WithRetry(fastRetry)}
			_, err := Register(testctx.New(t, 30*time.Second), tt.opts)
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got := srv.Methods(); !reflect.DeepEqual(got, tt.wantCalls) {
				t.Errorf("RPC sequence %q, want %q", got, tt.wantCalls)
			}
			if len(srv.Runners()) != 0 {
				t.Error("a runner was registered")
			}
		})
	}
}
