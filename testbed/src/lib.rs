//! Shop, MES and CRM stand-ins, the load driver and the truth file.
