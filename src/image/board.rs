//! What differs between the boards: firmware files, device trees, config.txt.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Board {
    Rpi3,
    Rpi4,
}

impl Board {
    /// GPU firmware from Debian's raspi-firmware (/usr/lib/raspi-firmware). The Pi 4 boots
    /// from its EEPROM and needs no bootcode.bin.
    pub fn firmware_files(self) -> &'static [&'static str] {
        match self {
            Board::Rpi3 => &["bootcode.bin", "start.elf", "fixup.dat"],
            Board::Rpi4 => &["start4.elf", "fixup4.dat"],
        }
    }

    /// Mainline device trees the firmware picks from by the board's model.
    pub fn device_trees(self) -> &'static [&'static str] {
        match self {
            Board::Rpi3 => &[
                "bcm2837-rpi-3-b.dtb",
                "bcm2837-rpi-3-b-plus.dtb",
                "bcm2837-rpi-3-a-plus.dtb",
            ],
            Board::Rpi4 => &[
                "bcm2711-rpi-4-b.dtb",
                "bcm2711-rpi-400.dtb",
                "bcm2711-rpi-cm4-io.dtb",
            ],
        }
    }

    pub fn config_txt(self) -> &'static str {
        match self {
            Board::Rpi3 => include_str!("../../image/boards/rpi3/config.txt"),
            Board::Rpi4 => include_str!("../../image/boards/rpi4/config.txt"),
        }
    }
}

impl fmt::Display for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Board::Rpi3 => "rpi3",
            Board::Rpi4 => "rpi4",
        })
    }
}

/// cmdline.txt: the kernel finds the console on the header UART and the agent finds its
/// root partition by the disk signature the image was built with.
pub fn cmdline_txt(root_partuuid: &str) -> String {
    include_str!("../../image/cmdline.txt").replace("{root_partuuid}", root_partuuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_names_the_console_and_the_root_partition_on_one_line() {
        let line = cmdline_txt("0a1b2c3d-02");
        assert_eq!(line.lines().count(), 1);
        assert!(line.starts_with("console=serial0,115200 console=ttyS1,115200 "));
        assert!(line.contains(" root=PARTUUID=0a1b2c3d-02 rootfstype=squashfs ro "));
        // A dead PID 1 (an abort, a stack overflow) panics the kernel: reboot, do not hang.
        assert!(
            line.split_whitespace().any(|arg| arg == "panic=10"),
            "{line}"
        );
    }

    #[test]
    fn each_board_boots_64_bit_with_the_uart_on() {
        for board in [Board::Rpi3, Board::Rpi4] {
            let config = board.config_txt();
            for line in [
                "arm_64bit=1",
                "enable_uart=1",
                "upstream_kernel=1",
                "kernel=vmlinuz",
            ] {
                assert!(config.lines().any(|l| l == line), "{board}: {line}");
            }
        }
        // The Pi 4's variable core clock would corrupt the mini UART's baud rate.
        assert!(Board::Rpi4
            .config_txt()
            .lines()
            .any(|l| l == "core_freq=360"));
        assert!(Board::Rpi3.firmware_files().contains(&"bootcode.bin"));
        assert!(Board::Rpi4.firmware_files().contains(&"start4.elf"));
    }
}
