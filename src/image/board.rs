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
