package store

import (
	"errors"
	"strings"
	"testing"
)

func TestValidKey(t *testing.T) {
	tests := []struct {
		key string
		ok  bool
	}{
		{"nix-cache-info", true},
		{"0123456789abcdfghijklmnpqrsvwxyz.narinfo", true},
		{"nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.zst", true},
		{"log/abc-hello_2.12+x-1.drv", true},
		{"a..b", true}, // dots inside a segment are harmless
		{strings.Repeat("a", 255) + "/" + strings.Repeat("b", 200) + "/" + strings.Repeat("c", MaxKeyLen-457), true}, // longest key
		{"", false},
		{"/", false},
		{"/abs", false},
		{"trailing/", false},
		{"a//b", false},
		{"..", false},
		{"a/../b", false},
		{"a/./b", false},
		{".tmp/x", false},
		{"x/.hidden", false},
		{"sp ace", false},
		{"back\\slash", false},
		{"nul\x00", false},
		{"%2e%2e", false},
		{"ünicode", false},
		{strings.Repeat("a", MaxKeyLen+1), false},
		{strings.Repeat("a", 256), false},
	}
	for _, tt := range tests {
		err := ValidKey(tt.key)
		if tt.ok && err != nil {
			t.Errorf("ValidKey(%q) = %v, want nil", tt.key, err)
		}
		if !tt.ok && !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ValidKey(%q) = %v, want ErrInvalidKey", tt.key, err)
		}
	}
}

func TestValidPrefix(t *testing.T) {
	tests := []struct {
		prefix string
		ok     bool
	}{
		{"", true},
		{"nar/", true},
		{"nar/1b", true},
		{"n", true},
		{"/", false},
		{"nar//", false},
		{"../", false},
		{".tmp/", false},
	}
	for _, tt := range tests {
		err := ValidPrefix(tt.prefix)
		if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidKey)) {
			t.Errorf("ValidPrefix(%q) = %v, want ok=%v", tt.prefix, err, tt.ok)
		}
	}
}
