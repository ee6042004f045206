//go:build !linux

package local

var platformSetups []benchSetup
